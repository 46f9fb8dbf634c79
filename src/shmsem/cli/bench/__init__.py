"""The benchmarks behind `shmsem bench` (private: no stable API).

common.py holds the measuring helpers shared with benchmarks/primitives.py;
peers.py measures the Channel and the Mailbox against their peers; plot.py
draws the chart; c/ holds the C floor programs, compiled at run time.
"""
