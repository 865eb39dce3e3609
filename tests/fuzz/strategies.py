"""Hypothesis strategies for hostile upstream input, every endpoint's ``args``, each example labelled.

An invalid example carries the words one of which its 400 message must contain,
so the tests check that the daemon names the problem, not only that it refuses.
Every injection payload tries to create a file whose path starts with CANARY;
the login node is this host, so a payload that reached a shell unquoted (through
SSH, sbatch or the job itself) leaves that file behind and the test sees it.
"""

from __future__ import annotations

import base64
import glob
import json
import string
import uuid
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, urlencode

from hypothesis import strategies as st

CANARY = f"/tmp/sd-canary-{uuid.uuid4().hex[:12]}"
EXECUTOR = "singularity"

# "@" stands for the canary path (numbered per template, so a hit says which payload fired).
_TEMPLATES = (
    "$(touch @)", "`touch @`", ";touch @", "'$(touch @)'", '"$(touch @)"', "|touch @", "&&touch @ #",
    "$(touch${IFS}@)", "';touch @;'", '";touch @;"', ")$(touch @)(", "\\$(touch @)", "$'\\x3b'touch @",
    "<(touch @)", ">(touch @)", "$((`touch @`))", "%0atouch @", "&touch @&", "||touch @", "-o/dev/null;touch @",
)
_MULTILINE_TEMPLATES = ("\ntouch @\n", "x\r\ntouch @", "\x00;touch @", "\u2028touch @")
_NAME_CHARS = string.ascii_letters + string.digits + "._-"
_LINE_SAFE = st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp"))


def canaries() -> list[str]:
    """Files any payload managed to create (must stay empty)."""
    return sorted(glob.glob(CANARY + "*"))


def _payload(index: int, template: str) -> str:
    return template.replace("@", f"{CANARY}-{index}")


def injection(*, inline: bool = False) -> st.SearchStrategy[str]:
    """A shell injection with a little noise around it; ``inline``: fits on one line (no control characters)."""
    templates = list(enumerate(_TEMPLATES))
    if not inline:
        templates += [(len(_TEMPLATES) + i, t) for i, t in enumerate(_MULTILINE_TEMPLATES)]
    noise = st.text(_LINE_SAFE, max_size=3) if inline else st.text(max_size=3)
    payload = st.sampled_from(templates).map(lambda it: _payload(*it))
    return st.tuples(noise, payload, noise).map("".join)


# ------------------------------------------------------------------ scalar values
LOOKALIKE_DIGITS = ("١٢", "１２", "𝟏𝟐", "²", "۱", "߁", "1\u200b", "12\n", "1_000", "0x10", "1e3", "1.0", "½", "+-1",
                    "1 2", "", "-", "+", "0b1", "Ⅻ")
_LOOKALIKE_NAMES = ("ｊob", "jоb", "job\u202e", "j\u200bob", "𝐣ob", "jöb", "ıjob")
BAD_NAME_STRINGS = ("", ".", "..", "../x", "../../etc/passwd", ".hidden", "-n", "-rf", "a/b", "a\\b", "a\x00b",
                    "a\nb", "job\n", "\njob", "a b", "a\tb", "x" * 129, "*", "a*", "a?", "a[1]", "~root", "a:b",
                    "a,b", "a=b", "a@b", "a#b", "a%b", "a+b", "%2e%2e") + _LOOKALIKE_NAMES


def non_strings() -> st.SearchStrategy[object]:
    return st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(),
        st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )


def bad_name_strings() -> st.SearchStrategy[str]:
    """Strings that are never an upstream job name (a character outside [A-Za-z0-9._-], a bad start, too long)."""
    forbidden = st.characters(codec="utf-8", exclude_characters=_NAME_CHARS, exclude_categories=("Cs",))
    return st.one_of(
        injection(),
        st.sampled_from(BAD_NAME_STRINGS),
        st.tuples(st.text(_NAME_CHARS, max_size=8), forbidden, st.text(max_size=8)).map("".join),
        st.tuples(st.sampled_from("._-"), st.text(_NAME_CHARS, max_size=8)).map("".join),
        st.text(_NAME_CHARS, min_size=129, max_size=400).map(lambda s: "a" + s),
    )


def bad_names() -> st.SearchStrategy[object]:
    return st.one_of(bad_name_strings(), non_strings().filter(lambda v: not isinstance(v, str)))


def valid_name_prefixes() -> st.SearchStrategy[str]:
    """Valid names up to 119 characters; the tests append ``-`` and 8 hex digits to make them unique."""
    return st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,118}\Z")


def bad_integer_strings() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(LOOKALIKE_DIGITS), injection(),
                     st.text(string.digits, min_size=21, max_size=6000), st.text(string.ascii_letters, min_size=1))


def bad_integers(lo: int, hi: int) -> st.SearchStrategy[object]:
    """Never an integer in [lo, hi], nor a string of one."""
    out_of_range = st.integers(max_value=lo - 1) | st.integers(min_value=hi + 1)
    return st.one_of(
        out_of_range, out_of_range.map(str), bad_integer_strings(), st.floats(), st.booleans(), st.none(),
        st.lists(st.integers(lo, hi), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    )


def bad_jobids() -> st.SearchStrategy[object]:
    return st.one_of(
        st.sampled_from(("", "12a", "1;2", "-1", "1.0", " 12", "12 ", "12\n", "١٢", "１２", "0x10", "1e3", "1/2")),
        injection(), st.integers(max_value=-1), st.integers(min_value=10**12), st.text(string.digits, min_size=13),
        st.floats(), st.none(), st.booleans(), st.lists(st.integers(), max_size=2),
    )


def bad_jobid_strings() -> st.SearchStrategy[str]:
    return bad_jobids().filter(lambda v: isinstance(v, str))


# Job ids far above anything the test cluster hands out: valid, and never someone else's job.
FREE_JOBIDS = st.integers(900_000_000, 999_999_999_999)


def deep_json(min_depth: int = 50, max_depth: int = 50_000) -> st.SearchStrategy[str]:
    """Nested arrays or objects as JSON text (json.dumps itself would hit the recursion limit)."""
    def nest(depth: int, kind: str) -> str:
        return "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth
    return st.builds(nest, st.integers(min_depth, max_depth), st.sampled_from(["list", "dict"]))


# ------------------------------------------------------------------ requests
@dataclass(frozen=True)
class Call:
    """One HTTP request and what the contract allows as its answer."""

    method: str
    path: str  # percent-encoded, may carry a query string
    body: bytes | None = None
    content_type: str | None = None
    expect: frozenset[int] = frozenset({400})
    words: tuple[str, ...] = ()  # a 4xx message must contain one of these (case-insensitive)
    name: object = None  # the upstream job name a /submit carried, for the no-job check
    note: str = field(default="", compare=False)  # what was broken, for the failure report


def segment(value: object) -> str:
    """One URL path segment, fully percent-encoded (dots too, so no client normalises ``..`` away)."""
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")
    return quote(raw, safe="").replace(".", "%2E")


def query_strings() -> st.SearchStrategy[str]:
    """A junk query string to hang on any URL ('' for none)."""
    text = st.one_of(st.text(max_size=40), injection(), st.binary(max_size=20).map(lambda b: quote(b, safe="")))
    return st.one_of(st.just(""), text.map(lambda t: "?" + quote(t, safe="=&%")),
                     text.map(lambda t: "?args=" + quote(t, safe="")))


def _json_text(args: object) -> str:
    return json.dumps(args, allow_nan=True)


@st.composite
def encoded(draw: st.DrawFn, args_text: str | bytes) -> tuple[bytes, str]:
    """``args`` as upstream sends it (a form field) or as a bare JSON body."""
    raw = args_text if isinstance(args_text, bytes) else args_text.encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        return b"args=" + quote(raw, safe="").encode(), "application/x-www-form-urlencoded"
    return raw, draw(st.sampled_from(["application/json", "text/plain", "application/octet-stream"]))


# ------------------------------------------------------------------ /submit
BASE_FIELDS: dict[str, str] = {
    "JOBOBJ_INTERACTIVE": "False",
    "JOBOBJ_APPDEFVERSION": "2",
    "JOBOBJ_ARCH": "amd64",
    "JOBOBJ_NAE": "jarvice-demo",
    "JOBOBJ_REPO": "docker.io/library/ubuntu:22.04",
    "JOBOBJ_USER": "alice",
    "JOBOBJ_DEVICES": '["exclusive=False"]',
    "JOBOBJ_GPUS": "0",
    "JOBOBJ_RAM": "0",
    "JOBOBJ_WALLTIME": "2",
    "JARVICE_CPU_CORES": "1",
    "JARVICE_CMD": "/bin/true",
}


def double_braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def script_line(key: str, value: str) -> str:
    """``KEY='value'`` as upstream writes it for ``str.format``: braces doubled, inert to bash."""
    value = double_braces(value)
    if "'" not in value:
        return f"{key}='{value}'"
    escaped = "".join("\\" + c if c in '\\$`"' else c for c in value)
    return f'{key}="{escaped}"'


def render_script(fields: dict[str, str | None], body: str = "echo ran", extra: str = "") -> str:
    lines = ["#!/bin/bash"]
    lines += [script_line(k, v) for k, v in fields.items() if v is not None]
    lines += [extra, "{DOWNSTREAM_PARAMETERS}", body]
    return "\n".join(lines) + "\n"


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def submit_args(name: object, script: str | bytes, **extra: object) -> dict:
    args = {"name": name, "number": 7, "nodes": 1, "hpc_script": {EXECUTOR: b64(script)}, "bearer": "b"}
    args.update(extra)
    return args


def devices_json(items: list[str]) -> str:
    """JSON that survives a single-quoted script line: no ' in it (JSON escapes it)."""
    return json.dumps(items).replace("'", "\\u0027")


def _field(key: str, values: st.SearchStrategy[str], *words: str) -> st.SearchStrategy[tuple]:
    return st.tuples(st.just(key), values, st.just(words or (key,)))


def _inline(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return strategy.filter(lambda v: "\n" not in v and "\x00" not in v)


def _device(items: st.SearchStrategy[str], *words: str) -> st.SearchStrategy[tuple]:
    return st.tuples(st.just("JOBOBJ_DEVICES"), items.map(lambda i: devices_json(["exclusive=False", i])),
                     st.just(words))


def script_field_mutations() -> st.SearchStrategy[tuple[str, str | None, tuple[str, ...]]]:
    """(key, bad value or None to drop the line, words the message must name)."""
    inj = injection(inline=True)
    bad_int = _inline(st.one_of(st.sampled_from(LOOKALIKE_DIGITS), inj, st.text(string.digits, min_size=21, max_size=60)))
    long_value = st.integers(1025, 3000).map(lambda n: "x" * n)
    return st.one_of(
        st.tuples(st.sampled_from(["JOBOBJ_APPDEFVERSION", "JARVICE_CPU_CORES"]), st.none(),
                  st.just(("JOBOBJ_APPDEFVERSION", "JARVICE_CPU_CORES"))),
        _field("JOBOBJ_APPDEFVERSION", bad_int),
        _field("JOBOBJ_APPDEFVERSION", st.sampled_from(["0", "1", "-1"]), "Appdef", "JOBOBJ_APPDEFVERSION"),
        _field("JARVICE_CPU_CORES", bad_int | st.sampled_from(["0", "-1", "100001"])),
        # an empty JOBOBJ_GPUS or JOBOBJ_RAM means "none asked" (the default 0), as upstream writes it
        _field("JOBOBJ_GPUS", bad_int.filter(bool) | st.sampled_from(["65", "-1"])),
        _field("JOBOBJ_RAM", bad_int.filter(bool) | st.sampled_from(["-1", "1000001"])),
        _field("JOBOBJ_INTERACTIVE", inj | st.sampled_from(["yes", "1", "", "Tru", "True\u200b"])),
        _field("JOBOBJ_WALLTIME", inj | st.sampled_from(["1h", "١:٠٠", "1:00:00 ", "9" * 12, "1:2:3:4", "-1"])),
        _field("JOBOBJ_LICENSES", inj | st.sampled_from(["matlab 2", "a:b", ",", "a:١"])),
        _field("JOBOBJ_DEVICES", inj | st.sampled_from(["[exclusive", "[1]", '"x"', "[[\"x\"]]", '{"a": [1]}']) | deep_json(
            50, 3000), "JOBOBJ_DEVICES"),
        _field("JOBOBJ_CTRSECRET", inj | st.sampled_from(["abc", b64("not json"), b64('{"auths": {"r": {}}}'),
                                                          b64('{"auths": {"r": []}}'), b64("[1]")])),
        _device(st.sampled_from(["gpu_type=a100", "$(touch x)=1", "sbatchqos=1"]), "unknown (pseudo)device"),
        _device(st.sampled_from(["noequals", "=x", " = "]), "malformed"),
        _device(inj.map(lambda v: "partition=" + v) | st.sampled_from(["partition=a b", "partition=", "partition=" + "p" * 65]),
                "partition"),
        _device(st.sampled_from(["exclusive=maybe", "exclusive=1", "exclusive="]), "exclusive"),
        _device(st.sampled_from(["overlay=-1", "overlay=١", "overlay=1e3", "overlay=9999999999"])
                | inj.map(lambda v: "overlay=" + v), "overlay"),
        _device(st.sampled_from(["sbatch_QOS=1", "sbatch_qos;id=1", "sbatch_=1", "sbatch_-qos=1"])
                | inj.filter(lambda v: "=" not in v).map(lambda v: f"sbatch_{v}=1"), "sbatch option"),
        _device(st.sampled_from(["job-na", "o", "out", "comm", "hold", "parsable", "wrap", "chdir", "export"]).map(
            lambda o: f"sbatch_{o}=/tmp/x"), "set by the downstream"),
        _device(st.sampled_from(["\x01", "\t", "\x7f", "\x1b[31m", "\r"]).map(lambda c: f"sbatch_mail-user=a{c}b"),
                "control character"),
        _device(long_value.map(lambda v: "sbatch_mail-user=" + v), "longer than"),
        st.tuples(st.just("JOBOBJ_DEVICES"), st.integers(40, 80).map(
            lambda n: devices_json([f"sbatch_mail-user={'m' * 1000}"] * n)), st.just(("longer than",))),
    )


def brace_mutations() -> st.SearchStrategy[str]:
    """Script text with a ``{field}`` other than the placeholder, or a lone brace."""
    field_names = st.one_of(
        st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,10}\Z").filter(lambda n: n != "DOWNSTREAM_PARAMETERS"),
        st.sampled_from(["", "0", "DOWNSTREAM_PARAMETERS!r", "DOWNSTREAM_PARAMETERS:>9", "a.b", "a[0]", " ",
                         '"username": "u", "password": "p"']),
        injection(inline=True).map(lambda v: v.replace("{", "").replace("}", "")),
    )
    return st.one_of(field_names.map(lambda n: f"echo {{{n}}}"),
                     st.sampled_from(["echo {", "echo }", "echo ${HOME", "awk '{print $1}'", "x}{", "{{{", "}}}"]))


@st.composite
def invalid_submits(draw: st.DrawFn, name: str) -> Call:
    """A /submit with exactly one thing wrong, and the words its 400 must name. ``name``: a fresh valid name."""
    script = render_script(dict(BASE_FIELDS))
    kind = draw(st.sampled_from(["arg", "missing", "hpc_script", "bytes", "field", "brace", "not-object", "deep"]))
    words: tuple[str, ...]
    args_text: str | bytes
    job_name: object = name
    if kind == "arg":
        key, bad, words = draw(st.sampled_from([
            ("name", bad_names(), ("'name'",)), ("number", bad_integers(0, 10**15), ("'number'",)),
            ("nodes", bad_integers(1, 100_000), ("'nodes'",)),
            ("held", st.one_of(st.text(max_size=5), st.integers(), st.none(), st.lists(st.booleans(), max_size=1)),
             ("'held'",)),
        ]).flatmap(lambda t: st.tuples(st.just(t[0]), t[1], st.just(t[2]))))
        args = submit_args(name, script)
        args[key] = bad
        job_name = args["name"]
        args_text = _json_text(args)
    elif kind == "missing":
        key = draw(st.sampled_from(["name", "number", "nodes", "hpc_script"]))
        args = submit_args(name, script)
        del args[key]
        words = ("hpc_script",) if key == "hpc_script" else (f"'{key}'",)
        args_text = _json_text(args)
    elif kind == "hpc_script":
        bad = draw(st.one_of(
            non_strings(), st.text(max_size=10), st.just({}), st.just({"docker": b64(script)}),
            st.just({EXECUTOR: ""}), st.sampled_from([{EXECUTOR: 5}, {EXECUTOR: None}, {EXECUTOR: [b64(script)]}]),
            st.sampled_from(["not base64!!", "Y", "١٢٣٤", b64(script)[:-1], b64(script) + "\n"]).map(
                lambda v: {EXECUTOR: v}),
            injection().map(lambda v: {EXECUTOR: v}),
        ))
        words = ("hpc_script", EXECUTOR)
        args_text = _json_text({"name": name, "number": 7, "nodes": 1, "hpc_script": bad})
    elif kind == "bytes":
        raw, words = draw(st.sampled_from([
            (script.encode() + b"\xff\xfe\n", ("UTF-8",)), (b"\xc0\xaf" + script.encode(), ("UTF-8",)),
            (script.encode() + b"echo a\x00b\n", ("NUL",)), (script.encode("utf-16"), ("UTF-8", "NUL")),
        ]))
        args_text = _json_text(submit_args(name, raw))
    elif kind == "field":
        key, bad, words = draw(script_field_mutations())
        fields: dict[str, str | None] = dict(BASE_FIELDS)
        fields[key] = bad
        args_text = _json_text(submit_args(name, render_script(fields)))
    elif kind == "brace":
        words = ("brace",)
        args_text = _json_text(submit_args(name, render_script(dict(BASE_FIELDS), body=draw(brace_mutations()))))
    elif kind == "not-object":
        job_name = None
        args_text = draw(st.one_of(
            st.sampled_from(["[]", '"x"', "1", "null", "true", "{", "{'name': 'x'}", "", " ", "{}}", "\ufeff{}"]),
            st.lists(st.integers(), max_size=3).map(json.dumps), st.binary(max_size=30),
        ))
        words = ("'args'", "'name'", "hpc_script")  # "" and {} are an empty object: its first missing key
    else:  # deep: nesting where a value belongs, past the parser's recursion limit or not
        job_name = None
        depth_text = draw(deep_json(50, 20_000))
        key = draw(st.sampled_from(["name", "number", "hpc_script", "held"]))
        base = _json_text(submit_args(name, script))
        args_text = base[:-1] + f', "{key}": {depth_text}}}' if key == "held" else base.replace(
            f'"{key}": ', f'"{key}": {depth_text}, "_{key}": ', 1)
        words = ("'args'", f"'{key}'", "hpc_script")
    body, content_type = draw(encoded(args_text))
    return Call("POST", "/submit" + draw(query_strings()), body, content_type, frozenset({400}), words, job_name, kind)


# ------------------------------------------------------------------ job-scoped endpoints
# a job that does not exist: /release and /events answer 404 (they act on tracked jobs only)
JOB_ENDPOINTS = {"/runstatus": 200, "/exitstatus": 200, "/terminate": 200, "/release": 404, "/events": 404}
REQUEST_METHODS = {"ping": 200, "connect": 200, "info": 200, "tail": 404, "screenshot": 404, "shutdown": 200,
                   "abort": 200}


@st.composite
def identities(draw: st.DrawFn, *, url: bool = False) -> tuple[dict, tuple[str, ...]]:
    """name/number/jobid of a job that does not exist (valid) or with one field broken; () when valid."""
    ids: dict = {"name": draw(valid_name_prefixes()), "number": draw(st.integers(0, 10**15)),
                 "jobid": draw(FREE_JOBIDS)}
    if draw(st.booleans()):
        ids["number"] = str(ids["number"]).zfill(draw(st.integers(0, 16)))
        ids["jobid"] = str(ids["jobid"])
    broken = draw(st.sampled_from(["", "name", "number", "jobid", "missing"]))
    if broken == "missing" and not url:
        key = draw(st.sampled_from(sorted(ids)))
        del ids[key]
        return ids, (f"'{key}'",)
    if broken == "name":
        ids["name"] = draw(bad_name_strings() if url else bad_names())
    elif broken == "number":
        ids["number"] = draw(bad_integer_strings() if url else bad_integers(0, 10**15))
    elif broken == "jobid":
        ids["jobid"] = draw(bad_jobid_strings() if url else bad_jobids())
    return ids, ((f"'{broken}'",) if broken in ("name", "number", "jobid") else ())


def upstream_qs() -> st.SearchStrategy[dict[str, list[str]]]:
    """``qs`` as upstream builds it: ``parse_qs`` of the query string a user's browser sent."""
    pairs = st.lists(st.tuples(st.sampled_from(["lines", "path", "details", "x"]) | st.text(max_size=5),
                               st.one_of(st.text(max_size=20), injection(), st.text(string.digits, max_size=5000))),
                     max_size=4)
    return pairs.map(lambda kv: parse_qs(urlencode(kv), keep_blank_values=True))


@st.composite
def job_calls(draw: st.DrawFn) -> Call:
    """/runstatus, /exitstatus, /terminate, /release, /events, and /request/<name>/<number>/<jobid>/<method>."""
    if draw(st.booleans()):
        path = draw(st.sampled_from(sorted(JOB_ENDPOINTS)))
        ids, words = draw(identities())
        body, content_type = draw(encoded(_json_text(ids)))
        expect = frozenset({400} if words else {JOB_ENDPOINTS[path]})
        return Call("POST", path + draw(query_strings()), body, content_type, expect, words, note=repr(ids))
    ids, words = draw(identities(url=True))
    method = draw(st.one_of(st.sampled_from(sorted(REQUEST_METHODS)),
                            st.text(_LINE_SAFE, max_size=12).filter(lambda m: "/" not in m)))
    qs = draw(st.one_of(st.just({}), st.dictionaries(st.text(max_size=8), st.lists(st.text(max_size=20), max_size=3),
                                                     max_size=3), tail_lines().map(lambda v: {"lines": [v]}),
                        upstream_qs()))
    segments = [ids["name"], ids["number"], ids["jobid"], method]
    path = "/request/" + "/".join(segment(s) for s in segments)
    body, content_type = draw(encoded(_json_text({"qs": qs})))
    decoded = "/".join(str(s) for s in segments)
    if decoded.startswith("/") or "\n" in decoded[1:]:
        # the route's path converter ([^/].*? without DOTALL) needs a first character that is not
        # "/" (a newline will do) and no newline after it: no route matches, a JSON 404
        words, expect = ("not found",), frozenset({404})
    elif words:
        # a decoded segment holding "/" changes the number of parts: refused as a malformed path
        words = (*words, "request path")
        expect = frozenset({400})
    else:
        expect = frozenset({REQUEST_METHODS.get(method, 200)})
    return Call("POST", path, body, content_type, expect, words, note=repr(segments))


# ------------------------------------------------------------------ /request/pvcls
@st.composite
def pvcls_calls(draw: st.DrawFn, root: str) -> Call:
    """Listings: hostile but absolute paths under ``root`` (listed or 'no such file'), or refused paths."""
    if draw(st.booleans()):
        tail = draw(st.one_of(injection(inline=True), st.text(_LINE_SAFE, max_size=30)).filter(
            lambda t: "/../" not in f"/{t}/"))
        qs = {**draw(upstream_qs()), "path": [f"{root}/{tail}"]}
        if draw(st.booleans()):
            qs["details"] = [draw(st.sampled_from(["true", "false", "TRUE", "x"]) | injection())]
        expect, words = frozenset({200, 502}), ("No such file", "Not a directory", "cluster")
    else:
        bad = draw(st.one_of(
            st.sampled_from(["", "tmp", "./x", "..", "/..", "/tmp/..", "/tmp/../etc", "../etc", "/a\nb", "/a\x00b",
                             "/a\rb", "~", "~/x", "-delete", "$(touch x)", "/" + "a" * 5000]),
            injection().map(lambda v: f"{root}/../{v}"),
            st.text(max_size=20).filter(lambda t: not t.startswith("/")),
            st.lists(st.integers(), min_size=1, max_size=2).map(lambda v: [v]),
            st.dictionaries(st.text(max_size=3), st.integers(), min_size=1, max_size=2),
        ))
        qs = {"path": bad if isinstance(bad, list) else [bad]}
        expect, words = frozenset({400}), ("'path'", "qs.path")
    args: dict = {"qs": qs}
    body, content_type = draw(encoded(_json_text(args)))
    return Call("POST", "/request/pvcls", body, content_type, expect, words, note=repr(qs))


# ------------------------------------------------------------------ everything else
CONSTANT_GETS = {"/queued": 200, "/running": 200, "/nodes": 200, "/gc": 200, "/live": 200, "/ready": 200}


@st.composite
def other_calls(draw: st.DrawFn) -> Call:
    """Probes and listings with junk query strings, wrong methods, junk bodies, unknown paths, /online."""
    kind = draw(st.sampled_from(["get", "wrong-method", "online", "unknown", "raw"]))
    query = draw(query_strings())
    if kind == "get":
        path = draw(st.sampled_from(sorted(CONSTANT_GETS)))
        return Call("GET", path + query, expect=frozenset({200}))
    if kind == "wrong-method":
        path, method = draw(st.sampled_from([(p, "POST") for p in CONSTANT_GETS if p not in ("/live", "/ready")]
                                            + [(p, m) for p in (*JOB_ENDPOINTS, "/submit", "/online")
                                               for m in ("GET", "PUT", "DELETE")]))
        return Call(method, path + query, b"args={}", "application/x-www-form-urlencoded", frozenset({405}),
                    ("not allowed",))
    if kind == "online":
        args = draw(st.one_of(st.dictionaries(st.text(max_size=5), st.text(max_size=20) | st.integers(), max_size=3),
                              st.just({"host": "node1"})))
        body, content_type = draw(encoded(_json_text(args)))
        return Call("POST", "/online" + query, body, content_type, frozenset({200}))
    if kind == "unknown":
        parts = draw(st.lists(st.text(max_size=10) | injection(), min_size=1, max_size=3))
        path = "/no-such/" + "/".join(segment(p) for p in parts)  # under a prefix no route has
        return Call(draw(st.sampled_from(["GET", "POST"])), path + query, expect=frozenset({404}), words=("not found",))
    # raw: any bytes, any content type, to any POST endpoint; refused as bad args, never a crash
    path = draw(st.sampled_from(["/submit", "/online", *JOB_ENDPOINTS, "/request/pvcls", "/request/a/1/2/tail"]))
    body = draw(st.one_of(
        st.binary(max_size=200), st.binary(max_size=50).map(lambda b: b"args=" + b),
        st.binary(max_size=50).map(lambda b: b"args=" + quote(b, safe="").encode()),
        st.just(b"--x\r\nContent-Disposition: form-data; name=\"args\"\r\n\r\n\xff\xfe\r\n--x--\r\n"),
        st.just(b"args=" + b"%5B" * 100_000),
    ))
    content_type = draw(st.sampled_from([
        None, "application/json", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
        "multipart/form-data", "application/x-www-form-urlencoded; charset=utf-16", "text/plain; charset=\xff",
        "image/png", "", "a/b; c=d; e",
    ]))
    # an empty or {} body is valid for /online and pvcls (it lists "/"); a tail of no job is 404
    expect = {"/online": {200, 400}, "/request/pvcls": {200, 400, 502}}.get(path, {400, 404})
    return Call("POST", path + query, body, content_type, frozenset(expect), ("'args'", "'name'", "'qs'", "'path'", "jobid",
                                                                     "hpc_script", "no output", "cluster", "no job"),
                note="raw")


# ------------------------------------------------------------------ valid but hostile submissions
@dataclass(frozen=True)
class HostileJob:
    """A valid /submit whose free-text values are injections; the job prints what it received."""

    prefix: str  # of the name
    command: str  # JARVICE_CMD
    repo_tail: str  # the end of JOBOBJ_REPO
    mail_user: str  # an sbatch option value that reaches sbatch's argv
    registry_user: str  # JOBOBJ_DOCKER_SECRET username (the job gets it base64-encoded)
    lines: object  # qs["lines"] for a tail

    BODY = ("printf 'cmd=%s\\n' \"$JARVICE_CMD\"\nprintf 'image=%s\\n' \"$JARVICE_APP_IMAGE\"\n"
            "printf 'user=%s\\n' \"$JARVICE_DOCKER_USERNAME\"\n")

    def script(self) -> str:
        fields = dict(BASE_FIELDS)
        fields["JARVICE_CMD"] = self.command
        fields["JOBOBJ_REPO"] = "docker.io/library/" + self.repo_tail
        # scontrol show job prints MailUser only with a MailType; this one never sends mail
        fields["JOBOBJ_DEVICES"] = devices_json(["exclusive=False", "sbatch_mail-type=INVALID_DEPEND",
                                                 f"sbatch_mail-user={self.mail_user}"])
        fields["JOBOBJ_DOCKER_SECRET"] = json.dumps({"username": self.registry_user, "password": "pw"}).replace(
            "'", "\\u0027")
        return render_script(fields, body=self.BODY)

    def expected_output(self) -> dict[str, str]:
        """What the job prints: each value as the downstream read it from its single- or double-quoted line."""
        def read(value: str) -> str:
            line = script_line("K", value)
            return line[3:-1].replace("{{", "{").replace("}}", "}")
        return {"cmd": read(self.command), "image": "docker://docker.io/library/" + read(self.repo_tail),
                "user": b64(self.registry_user)}


def tail_lines() -> st.SearchStrategy[object]:
    """``qs["lines"]`` values: lookalike digits, injections, thousands of digits, wrong types."""
    return st.one_of(st.sampled_from(LOOKALIKE_DIGITS), injection(), st.text(string.digits, max_size=6000),
                     st.integers(), st.floats(), st.booleans(), st.none())


def hostile_jobs() -> st.SearchStrategy[HostileJob]:
    free_text = st.one_of(injection(inline=True), st.text(_LINE_SAFE, min_size=1, max_size=40)).map(str.strip).filter(bool)
    printable = st.one_of(injection(inline=True), st.text(string.printable.strip(), min_size=1, max_size=40))
    return st.builds(
        HostileJob,
        prefix=valid_name_prefixes(),
        command=free_text,
        repo_tail=free_text,
        mail_user=printable.map(lambda v: "".join(c for c in v if c.isprintable()).strip()).filter(bool),
        registry_user=free_text,
        lines=tail_lines(),
    )
