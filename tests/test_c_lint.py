"""A grep of the C core for classic CPython API mistakes (msgspec's test_cpylint).

It reads every src/shmsem/csrc/*.c, with comments, strings and preprocessor
lines blanked out, and reports:

(a) a PyType_Spec whose type Python could build although C does not expect
    it to: neither Py_TPFLAGS_DISALLOW_INSTANTIATION (or the project's
    SS_TPFLAGS_NO_NEW, with SS_SLOT_NO_NEW in its slots for Python 3.9) nor
    a Py_tp_new slot.  Such a type inherits object's tp_new, and Python gets
    an object whose fields C assumes set (SegmentPin() segfaulted so);
(b) a region without the GIL, Py_BEGIN_ALLOW_THREADS ... Py_END_ALLOW_THREADS
    or PyEval_SaveThread() ... PyEval_RestoreThread(), that
      - names a variable of a PyObject type (PyObject *, or any *Object *),
      - calls a Py* API (but the few that need no GIL),
      - contains a `return`, and, in Py_BEGIN/END, a `goto` or a `break` or
        `continue` that leaves the region (each skips the restore);
(c) a function that gets a buffer (PyObject_GetBuffer, or a PyArg_Parse*
    format with y*, s*, z* or w*) and never calls PyBuffer_Release.

It is a grep, not a compiler: it knows C only as far as these rules need.
A finding that is right but cannot be fixed here goes in ALLOWED, narrowly
(file, function, rule, and the name or call it is about), with the reason; an
ALLOWED entry that no longer matches anything fails too, so the list stays
short.  The self-tests at the end feed it known-bad snippets: it must be able
to fail.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

CSRC = Path(__file__).resolve().parent.parent / "src" / "shmsem" / "csrc"


@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    function: str
    rule: str  # "new", "nogil-object", "nogil-api", "nogil-exit", "nogil-unbalanced", "buffer"
    what: str  # the name, call or statement it is about

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: in {self.function}(): [{self.rule}] {self.what}"


#: (file, function, rule, what) -> why it is allowed.  Keep this short.
ALLOWED: dict[tuple[str, str, str, str], str] = {
}

#: Py* names that need no GIL (macros over plain C, or documented GIL-free).
NOGIL_SAFE = re.compile(
    r"Py_(MIN|MAX|ABS|ARRAY_LENGTH|UNUSED|SAFE_DOWNCAST|CHARMASK)$"
    r"|PyMem_Raw\w+$|PyThread_\w+$|PyOS_v?snprintf$"
)


# ---------------------------------------------------------------------------
# Reading C


def blank(src: str) -> str:
    """src with comments, string and char literals, and preprocessor lines
    replaced by spaces (newlines kept), so that offsets and lines still match."""
    out = list(src)
    i, n = 0, len(src)
    at_line_start = True
    while i < n:
        c = src[i]
        if at_line_start and c == "#":
            # A preprocessor line, with its continuations.
            j = i
            while j < n and not (src[j] == "\n" and src[j - 1] != "\\"):
                j += 1
            for k in range(i, j):
                if out[k] != "\n":
                    out[k] = " "
            i = j
            continue
        if c == "\n":
            at_line_start = True
            i += 1
            continue
        if not c.isspace():
            at_line_start = False
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
        elif src.startswith("/*", i):
            j = src.find("*/", i + 2)
            j = n if j < 0 else j + 2
        elif c in "\"'":
            j = i + 1
            while j < n and src[j] != c:
                j += 2 if src[j] == "\\" else 1
            j += 1
        else:
            i += 1
            continue
        for k in range(i, min(j, n)):
            if out[k] != "\n":
                out[k] = " "
        i = j
    return "".join(out)


def matching(code: str, start: int, open_: str = "{", close: str = "}") -> int:
    """Offset just past the bracket that closes the one at start."""
    depth = 0
    for i in range(start, len(code)):
        if code[i] == open_:
            depth += 1
        elif code[i] == close:
            depth -= 1
            if depth == 0:
                return i + 1
    raise ValueError(f"unbalanced {open_!r} at offset {start}")


@dataclass
class Function:
    name: str
    params: str
    body_start: int  # offset of the opening brace
    body_end: int


def functions(code: str) -> list[Function]:
    """Function definitions: a top-level {...} right after a parameter list."""
    found = []
    i, boundary = 0, 0
    while i < len(code):
        c = code[i]
        if c in ";}":
            boundary = i + 1
        elif c == "{":
            end = matching(code, i)
            header = code[boundary:i].rstrip()
            if header.endswith(")") and "=" not in header:
                close = len(header) - 1
                depth, j = 0, close
                while j >= 0:
                    depth += {")": 1, "(": -1}.get(header[j], 0)
                    if depth == 0:
                        break
                    j -= 1
                m = re.search(r"(\w+)\s*$", header[:j])
                if m:
                    found.append(Function(m.group(1), header[j + 1:close], i, end))
            i, boundary = end, end
            continue
        i += 1
    return found


OBJECT_TYPE = r"(?:PyObject|[A-Za-z_]\w*Object)"


def object_names(code: str, fn: Function) -> set[str]:
    """Parameters and locals of fn declared as pointers to a PyObject type."""
    names = set()
    for param in fn.params.split(","):
        if re.search(rf"\b{OBJECT_TYPE}\b", param) and "*" in param:
            m = re.search(r"(\w+)\s*(\[\s*\])?\s*$", param)
            if m:
                names.add(m.group(1))
    body = code[fn.body_start:fn.body_end]
    for m in re.finditer(rf"(?:^|[;{{}}(]\s*)(?:const\s+|static\s+)*{OBJECT_TYPE}\s*(\*[^;]*);",
                         body, re.M):
        # Split the declarators at commas outside brackets.
        depth, part, parts = 0, "", []
        for ch in m.group(1):
            if ch in "([{":
                depth += 1
            elif ch in ")]}":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(part)
                part = ""
            else:
                part += ch
        parts.append(part)
        for p in parts:
            d = re.match(r"\s*[*\s]*(?:const\s+)?\**\s*(\w+)", p.split("=")[0])
            if d:
                names.add(d.group(1))
    return names


@dataclass
class Region:
    kind: str  # "begin" or "save"
    start: int  # offset just after the opening macro/call
    end: int  # offset of the closing macro/call


def nogil_regions(code: str, fn: Function, emit: Callable[[int, str, str], None]) -> list[Region]:
    body = code[fn.body_start:fn.body_end]
    base = fn.body_start
    regions = []
    for kind, opener, closer in (
        ("begin", r"\bPy_BEGIN_ALLOW_THREADS\b", r"\bPy_END_ALLOW_THREADS\b"),
        ("save", r"\bPyEval_SaveThread\s*\(\s*\)", r"\bPyEval_RestoreThread\s*\("),
    ):
        for m in re.finditer(opener, body):
            close = re.compile(closer).search(body, m.end())
            if close is None:
                emit(base + m.start(), "nogil-unbalanced", f"{m.group(0)} is never closed")
                continue
            again = re.compile(opener).search(body, m.end(), close.start())
            if again is not None:
                emit(base + again.start(), "nogil-unbalanced",
                     f"{again.group(0)} again before the region is closed")
                continue
            regions.append(Region(kind, base + m.end(), base + close.start()))
    return regions


def escapes(region: str) -> list[tuple[int, str]]:
    """`break`/`continue` in region that leave it (not inside a loop or
    switch that starts in the region)."""
    out = []
    stack: list[str] = []  # kinds of the open braces
    pending: str | None = None  # a loop/switch keyword whose body comes next
    single: list[str] = []  # unbraced bodies in progress, closed by ';'
    tokens = re.finditer(r"\b(for|while|do|switch|break|continue)\b|[{};()]", region)
    paren_skip_until = -1
    for t in tokens:
        if t.start() < paren_skip_until:
            continue
        tok = t.group(0)
        if tok in ("for", "while", "switch"):
            close = matching(region, region.index("(", t.end()), "(", ")")
            paren_skip_until = close
            nxt = region[close:].lstrip()
            kind = "switch" if tok == "switch" else "loop"
            if nxt.startswith("{"):
                pending = kind
            elif nxt.startswith(";"):
                pass  # `while (x);` or the tail of a do-while
            else:
                single.append(kind)
        elif tok == "do":
            pending = "loop"
        elif tok == "{":
            stack.append(pending or "block")
            pending = None
        elif tok == "}":
            if stack:
                stack.pop()
        elif tok == ";":
            if single:
                single.pop()
        elif tok in ("break", "continue"):
            scopes = stack + single
            ok = any(s == "loop" or (tok == "break" and s == "switch") for s in scopes)
            if not ok:
                out.append((t.start(), tok))
    return out


def lint_source(name: str, src: str) -> list[Finding]:
    code = blank(src)
    newlines = [i for i, c in enumerate(src) if c == "\n"]
    findings: list[Finding] = []

    def line_of(offset: int) -> int:
        return bisect.bisect_left(newlines, offset) + 1

    fns = functions(code)

    def function_at(offset: int) -> str:
        for fn in fns:
            if fn.body_start <= offset < fn.body_end:
                return fn.name
        return "<file scope>"

    def emit(offset: int, rule: str, what: str) -> None:
        findings.append(Finding(name, line_of(offset), function_at(offset), rule, what))

    # (a) type specs
    for m in re.finditer(r"\bPyType_Spec\s+(\w+)\s*=\s*\{", code):
        spec = code[m.end() - 1:matching(code, m.end() - 1)]
        flags = re.search(r"\.flags\s*=\s*([^,}]*)", spec)
        slots = re.search(r"\.slots\s*=\s*(\w+)", spec)
        if flags is None or slots is None:
            emit(m.start(), "new", f"{m.group(1)}: cannot find .flags and .slots")
            continue
        sm = re.search(rf"\bPyType_Slot\s+{slots.group(1)}\s*\[\s*\]\s*=\s*\{{", code)
        if sm is None:
            emit(m.start(), "new", f"{m.group(1)}: cannot find its slots {slots.group(1)}[]")
            continue
        slot_text = code[sm.end() - 1:matching(code, sm.end() - 1)]
        has_new = re.search(r"\bPy_tp_new\b", slot_text) is not None
        disallow = re.search(r"\bPy_TPFLAGS_DISALLOW_INSTANTIATION\b", flags.group(1)) is not None
        project = re.search(r"\bSS_TPFLAGS_NO_NEW\b", flags.group(1)) is not None
        if project and not re.search(r"\bSS_SLOT_NO_NEW\b", slot_text):
            emit(m.start(), "new", f"{m.group(1)}: SS_TPFLAGS_NO_NEW without SS_SLOT_NO_NEW "
                 "in its slots (Python 3.9 would build it)")
        elif not (has_new or disallow or project):
            emit(m.start(), "new", f"{m.group(1)}: neither Py_TPFLAGS_DISALLOW_INSTANTIATION "
                 "nor a Py_tp_new slot")

    for fn in fns:
        body = code[fn.body_start:fn.body_end]
        # (b) regions without the GIL
        objects = object_names(code, fn)
        for r in nogil_regions(code, fn, emit):
            text = code[r.start:r.end]
            for t in re.finditer(r"\breturn\b", text):
                emit(r.start + t.start(), "nogil-exit", "return")
            if r.kind == "begin":
                for t in re.finditer(r"\bgoto\b", text):
                    emit(r.start + t.start(), "nogil-exit", "goto")
                for off, tok in escapes(text):
                    emit(r.start + off, "nogil-exit", tok)
            for t in re.finditer(r"\b(_?Py\w*)\s*\(", text):
                if not NOGIL_SAFE.match(t.group(1)):
                    emit(r.start + t.start(), "nogil-api", t.group(1))
            seen = set()
            for t in re.finditer(r"\b\w+\b", text):
                if t.group(0) in objects and t.group(0) not in seen:
                    seen.add(t.group(0))
                    emit(r.start + t.start(), "nogil-object", t.group(0))
        # (c) buffers
        gets = list(re.finditer(r"\bPyObject_GetBuffer\s*\(", body))
        for pa in re.finditer(r"\bPyArg_Parse\w*\s*\(", body):
            # The format string is blanked in code: read it from src.
            call = src[fn.body_start + pa.start():matching(code, fn.body_start + pa.end() - 1,
                                                           "(", ")")]
            if any(re.search(r"[yszw]\*", s) for s in re.findall(r'"((?:[^"\\]|\\.)*)"', call)):
                gets.append(pa)
        if gets and not re.search(r"\bPyBuffer_Release\s*\(", body):
            emit(fn.body_start + gets[0].start(), "buffer",
                 "gets a buffer but never calls PyBuffer_Release")
    return findings


def lint_tree() -> list[Finding]:
    out = []
    for path in sorted(CSRC.glob("*.c")):
        out += lint_source(path.name, path.read_text())
    return out


def allowed(f: Finding) -> bool:
    return (f.file, f.function, f.rule, f.what) in ALLOWED


# ---------------------------------------------------------------------------
# The tests


def test_scans_every_c_file() -> None:
    files = sorted(p.name for p in CSRC.glob("*.c"))
    assert {"shm.c", "sem.c", "msg.c", "keys.c", "boundary.c", "wait.c", "object.c",
            "module.c", "channel.c", "mailbox.c", "plock.c"} <= set(files)
    # Every file is read: each defines functions the scanner recognises.
    for name in files:
        assert functions(blank((CSRC / name).read_text())), name


def test_c_sources_have_none_of_the_classic_mistakes() -> None:
    bad = [str(f) for f in lint_tree() if not allowed(f)]
    assert bad == [], "\n".join(bad)


def test_allowlist_is_still_needed() -> None:
    keys = {(f.file, f.function, f.rule, f.what) for f in lint_tree()}
    stale = [k for k in ALLOWED if k not in keys]
    assert stale == [], f"ALLOWED entries that match nothing any more (remove them): {stale}"


# ---------------------------------------------------------------------------
# Self-tests: the lint must be able to fail.


def rules(src: str) -> list[tuple[str, str]]:
    return [(f.rule, f.what) for f in lint_source("snippet.c", src)]


SPEC = """
static PyType_Slot thing_slots[] = {
    %s
    {Py_tp_dealloc, thing_dealloc},
    {0, NULL},
};
PyType_Spec thing_spec = {
    .name = "x.Thing",
    .basicsize = sizeof(ThingObject),
    .flags = Py_TPFLAGS_DEFAULT%s,
    .slots = thing_slots,
};
"""


@pytest.mark.parametrize("slot, flags, expected", [
    ("", "", 1),
    ("", " | Py_TPFLAGS_BASETYPE", 1),
    ("{Py_tp_new, thing_new},", "", 0),
    ("", " | Py_TPFLAGS_DISALLOW_INSTANTIATION", 0),
    ("SS_SLOT_NO_NEW", " | SS_TPFLAGS_NO_NEW", 0),
    ("", " | SS_TPFLAGS_NO_NEW", 1),
    ("/* {Py_tp_new, thing_new}, */", "", 1),
])
def test_self_test_type_spec(slot: str, flags: str, expected: int) -> None:
    found = [r for r in rules(SPEC % (slot, flags)) if r[0] == "new"]
    assert len(found) == expected, found


BAD_REGIONS = {
    "return": (
        "static int f(int fd) {\n int rc;\n Py_BEGIN_ALLOW_THREADS\n rc = read(fd, 0, 0);\n"
        " if (rc < 0) return -1;\n Py_END_ALLOW_THREADS\n return rc;\n}\n",
        ("nogil-exit", "return")),
    "goto": (
        "static int f(int fd) {\n int rc;\n Py_BEGIN_ALLOW_THREADS\n rc = read(fd, 0, 0);\n"
        " if (rc < 0) goto fail;\n Py_END_ALLOW_THREADS\n return rc;\nfail:\n return -1;\n}\n",
        ("nogil-exit", "goto")),
    "break out of an outer loop": (
        "static void f(int fd) {\n for (;;) {\n  Py_BEGIN_ALLOW_THREADS\n"
        "  if (read(fd, 0, 0) == 0) break;\n  Py_END_ALLOW_THREADS\n }\n}\n",
        ("nogil-exit", "break")),
    "object": (
        "static void f(PyObject *self, PyObject *const *args) {\n Py_BEGIN_ALLOW_THREADS\n"
        " use(args[0]);\n Py_END_ALLOW_THREADS\n}\n",
        ("nogil-object", "args")),
    "local object": (
        "static void f(void) {\n PyObject *a = NULL, *b = g();\n Py_BEGIN_ALLOW_THREADS\n"
        " use(b);\n Py_END_ALLOW_THREADS\n}\n",
        ("nogil-object", "b")),
    "project object type": (
        "static void f(SegmentObject *seg) {\n PyThreadState *ts = PyEval_SaveThread();\n"
        " memmove(seg->addr, 0, 0);\n PyEval_RestoreThread(ts);\n}\n",
        ("nogil-object", "seg")),
    "api": (
        "static void f(char *p) {\n Py_BEGIN_ALLOW_THREADS\n Py_DECREF(p);\n"
        " Py_END_ALLOW_THREADS\n}\n",
        ("nogil-api", "Py_DECREF")),
    "return after SaveThread": (
        "static int f(void) {\n PyThreadState *ts = PyEval_SaveThread();\n"
        " if (x) return 1;\n PyEval_RestoreThread(ts);\n return 0;\n}\n",
        ("nogil-exit", "return")),
    "unclosed": (
        "static void f(void) {\n Py_BEGIN_ALLOW_THREADS\n work();\n}\n",
        ("nogil-unbalanced", "Py_BEGIN_ALLOW_THREADS is never closed")),
}


@pytest.mark.parametrize("name", sorted(BAD_REGIONS))
def test_self_test_bad_region(name: str) -> None:
    src, expected = BAD_REGIONS[name]
    assert expected in rules(src)


def test_self_test_good_regions() -> None:
    src = """
static PyObject *
f(PyObject *self, PyObject *arg)
{
    int rc, err;
    /* a comment that says Py_DECREF(self); return; */
    const char *s = "Py_INCREF(arg); return";
    do {
        Py_BEGIN_ALLOW_THREADS
        for (int i = 0; i < 3; i++) {
            if (i == 1)
                continue;
            switch (i) { case 2: break; }
        }
        while (busy())
            break;
        rc = semop(1, NULL, Py_MIN(1, 2));
        err = errno;
        Py_END_ALLOW_THREADS
    } while (rc < 0 && err == EINTR);
    PyThreadState *ts = PyEval_SaveThread();
    for (;;) {
        if (ready())
            break;
        PyEval_RestoreThread(ts);
        if (PyErr_CheckSignals() < 0)
            return NULL;
        ts = PyEval_SaveThread();
    }
    PyEval_RestoreThread(ts);
    return PyLong_FromLong(rc);
}
"""
    assert rules(src) == []


@pytest.mark.parametrize("src, expected", [
    ("static PyObject *f(PyObject *o) {\n Py_buffer v;\n"
     " if (PyObject_GetBuffer(o, &v, PyBUF_SIMPLE) < 0) return NULL;\n return use(&v);\n}\n", 1),
    ("static PyObject *f(PyObject *o) {\n Py_buffer v;\n"
     " if (PyObject_GetBuffer(o, &v, PyBUF_SIMPLE) < 0) return NULL;\n"
     " PyBuffer_Release(&v);\n Py_RETURN_NONE;\n}\n", 0),
    ("static PyObject *f(PyObject *a, PyObject *k) {\n Py_buffer v; int i;\n"
     " if (!PyArg_ParseTupleAndKeywords(a, k, \"iy*:f\", kw, &i, &v)) return NULL;\n"
     " Py_RETURN_NONE;\n}\n", 1),
    ("static PyObject *f(PyObject *a) {\n int i; const char *s;\n"
     " if (!PyArg_ParseTuple(a, \"is:f\", &i, &s)) return NULL;\n Py_RETURN_NONE;\n}\n", 0),
])
def test_self_test_buffer(src: str, expected: int) -> None:
    assert len([r for r in rules(src) if r[0] == "buffer"]) == expected
