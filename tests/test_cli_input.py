"""Host-side input at the CLI's edge: numbers are finite and in range, every error is one
unwrapped `pvkit:` line, and the CLI says its version, its help and its exit statuses.

The numeric options are fed random values in-process (`main(argv)`), with an empty image:
a value the option takes then ends at the image ("is empty"), one it refuses at the option,
and either way the answer is exit 2 and one sentence, never a traceback or a crash.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvkit import __version__
from pvkit.bench.probes import BenchError
from pvkit.cli.app import main
from pvkit.cli.bench import MAX_REPS
from pvkit.cli.session import EXIT_CODES

from .conftest import ROOT, SMP_HELLO, pvkit


def run_main(*args: str) -> tuple[int, str, str]:
    """`pvkit ARGS` in this process: (exit status, stdout, stderr)."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # has .buffer, as sys.stdout
    err = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        else:
            code = 0
    out.flush()
    return code, out.buffer.getvalue().decode(), err.getvalue()  # type: ignore[attr-defined]


def assert_one_sentence(code: int, err: str, expect: int = 2) -> str:
    assert code == expect, (code, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pvkit: "), err
    return lines[0]


@pytest.fixture(scope="module")
def empty_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "empty.Image"
    path.write_bytes(b"")
    return path


# -- the defects: --timeout inf/1e309/1e12/-1/nan, --slice-ms nan ---------------------------
@pytest.mark.parametrize("value", ["inf", "1e309", "1e12", "-1", "nan", "-inf", "0"])
def test_a_timeout_that_is_not_a_finite_positive_time_is_refused(value: str) -> None:
    code, _out, err = run_main("run", str(SMP_HELLO), "--timeout", value)
    line = assert_one_sentence(code, err)
    assert line.startswith(f"pvkit: --timeout {float(value):g}: give a number of seconds")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e300", "-1", "0.0001"])
def test_a_time_slice_that_is_not_finite_and_in_range_is_refused(value: str) -> None:
    code, _out, err = run_main("run", str(SMP_HELLO), "--slice-ms", value)
    assert "a time slice must be at least 1 µs" in assert_one_sentence(code, err)


def test_a_long_timeout_on_four_vcpus_runs_to_the_guest_s_end() -> None:
    """1e12 s overflowed the host's wait (a traceback, and SIGSEGV in 2 of 4 runs with
    --smp 4); the largest accepted limit waits as a limit should."""
    r = pvkit("run", str(SMP_HELLO), "--smp", "4", "--timeout", "1e9")
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "pvkit: shutdown: PSCI SYSTEM_OFF from vCPU 0"


# -- property: random values for every numeric option ---------------------------------------
NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(2**80), 2**80).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "0x10", "1_0", "", " ", "5e", "--", "½"]),
    st.text(max_size=8),
)
SIZES = st.one_of(
    NUMBERS, st.builds("{}{}".format, st.integers(-5, 2**70), st.sampled_from("KMGT"))
)
RUN_OPTIONS = ["--smp", "--host-cpus", "--timeout", "--slice-ms", "--gic", "--swap-latency-ms"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(option=st.sampled_from([*RUN_OPTIONS, "--mem", "--cpuid-base"]), value=SIZES)
def test_any_value_of_a_numeric_run_option_ends_in_one_sentence(
    option: str, value: str, empty_image: Path
) -> None:
    arch = ["--arch", "x86_64"] if option == "--cpuid-base" else []
    code, _out, err = run_main("run", str(empty_image), *arch, f"{option}={value}")
    assert_one_sentence(code, err)


@settings(max_examples=150, deadline=None)
@given(option=st.sampled_from(["--smp", "--mem"]), value=SIZES)
def test_any_value_of_a_dtb_option_ends_in_one_sentence_or_a_dtb(
    option: str, value: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = tmp_path_factory.getbasetemp() / "vm.dtb"
    code, stdout, err = run_main("dtb", "-o", str(out), f"{option}={value}")
    if code == 0:
        assert stdout.startswith("wrote ") and err == ""
    else:
        assert_one_sentence(code, err)


@settings(max_examples=150, deadline=None)
@given(value=NUMBERS, arch=st.sampled_from(["arm64", "x86_64"]))
def test_any_function_id_is_decoded_or_refused_in_one_sentence(value: str, arch: str) -> None:
    code, stdout, err = run_main("decode", f"--arch={arch}", "--", value)
    if code == 0:
        assert stdout and err == ""
    else:
        assert_one_sentence(code, err)


@settings(max_examples=100, deadline=None)
@given(value=st.one_of(st.integers(-(2**70), 2**70).map(str), NUMBERS))
def test_any_repetition_count_is_refused_in_one_sentence_or_reaches_the_suite(value: str) -> None:
    """The suite itself is replaced: a count the option takes reaches it, and only 1..1000."""
    reached = BenchError("the suite was reached")
    with mock.patch("pvkit.cli.bench.run_suite", side_effect=reached) as suite:
        code, _out, err = run_main("bench", "--quick", f"--reps={value}")
    if suite.called:
        assert 1 <= suite.call_args.args[0].reps <= MAX_REPS
        assert assert_one_sentence(code, err, expect=1) == "pvkit: the suite was reached"
    else:
        assert_one_sentence(code, err)


# -- one error style, unwrapped; --version; help on a pipe ----------------------------------
@pytest.mark.parametrize(
    ("args", "start"),
    [
        (["run", str(SMP_HELLO), "--smp", "x"], "pvkit: invalid value for '--smp'"),
        (["run", "--bogus"], "pvkit: no such option: --bogus"),
        (["nosuch"], "pvkit: no such command 'nosuch'"),
        (["decode"], "pvkit: missing argument"),
    ],
)
def test_parser_errors_are_one_pvkit_line_like_every_other_error(
    args: list[str], start: str
) -> None:
    r = pvkit(*args)
    line = assert_one_sentence(r.returncode, r.stderr)
    assert line.startswith(start) and "--help'" in line
    assert not set("╭╮╰╯│") & set(r.stderr)


def test_a_stop_message_wider_than_80_columns_stays_on_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.Image"
    blob = bytearray(SMP_HELLO.read_bytes())
    blob[0:4] = (0x14000001).to_bytes(4, "little")  # b +4: into code 0, undefined
    junk.write_bytes(bytes(blob))
    symbols = tmp_path / "System.map"
    name = "a_function_whose_name_alone_takes_most_of_an_eighty_column_line"
    symbols.write_text(f"0000000040200000 T {name}\n")
    r = pvkit("run", str(junk), "--symbols", str(symbols))
    assert r.returncode == 1
    (line,) = r.stderr.splitlines()  # rich used to break it at 80 columns ("at PC" / "0x40...")
    assert line.startswith("pvkit: fault: vCPU 0: undefined instruction 0x00000000 at PC 0x402")
    assert line.endswith(f"({name}+0x4)") and len(line) > 80


def test_version_prints_the_package_version() -> None:
    r = pvkit("--version")
    assert r.returncode == 0 and r.stdout == f"pvkit {__version__}\n" and r.stderr == ""


def test_help_on_a_pipe_is_plain_and_not_cut_at_80_columns() -> None:
    r = pvkit("run", "--help")
    assert r.returncode == 0 and "--timeout" in r.stdout
    assert not set("╭╮╰╯│─") & set(r.stdout)
    assert max(len(line) for line in r.stdout.splitlines()) > 80
    bare = pvkit()
    assert bare.returncode == 0 and "Commands:" in bare.stdout and "--version" in bare.stdout


def test_the_readme_lists_every_exit_status_the_cli_returns() -> None:
    readme = (ROOT / "README.md").read_text()
    table = re.search(r"Exit status .*?\n\n(\|.*?)\n\n", readme, re.DOTALL)
    assert table is not None
    listed = set(re.findall(r"^\| (\d+) \|", table.group(1), re.MULTILINE))
    returned = {str(c) for c in EXIT_CODES.values()} | {"2"}  # 2: options.fail's default
    assert returned <= listed, returned - listed
    assert "isa-debug-exit" in table.group(1)  # x86's (v << 1) | 1


def test_the_float_options_refuse_what_float_accepts_but_time_cannot_be() -> None:
    # float() takes all of these; none is a duration
    for text in ("nan", "inf", "1e309"):
        assert not math.isfinite(float(text))
        code, _out, err = run_main("run", str(SMP_HELLO), "--timeout", text)
        assert_one_sentence(code, err)
