"""The language table and every language end to end: hello world, stdin/args, compile errors."""

from __future__ import annotations

import pytest

from argosy.core.errors import NotFoundError
from argosy.sandbox.errors import SandboxRequestError
from argosy.sandbox.languages import LanguageTable
from argosy.sandbox.models import ExecRequest
from argosy.sandbox.service import LocalRunner

from .conftest import toolchain_missing

HELLO = {
    "python": "import sys\nprint('hello', sys.argv[1], input())",
    "node": "const a = process.argv[2]; const s = require('fs').readFileSync(0, 'utf8').trim(); console.log('hello', a, s)",
    "bash": "read line; echo hello $1 $line",
    "ruby": 'puts "hello #{ARGV[0]} #{STDIN.gets.strip}"',
    "go": 'package main\nimport ("bufio"; "fmt"; "os")\nfunc main() { s := bufio.NewScanner(os.Stdin); s.Scan(); fmt.Println("hello", os.Args[1], s.Text()) }',
    "rust": 'use std::io::BufRead;\nfn main() { let a: Vec<String> = std::env::args().collect(); let mut l = String::new(); std::io::stdin().lock().read_line(&mut l).unwrap(); println!("hello {} {}", a[1], l.trim()); }',
    "c": '#include <stdio.h>\nint main(int c, char **v) { char b[64]; fgets(b, 64, stdin); printf("hello %s %s", v[1], b); return 0; }',
    "cpp": '#include <iostream>\n#include <string>\nint main(int c, char **v) { std::string s; std::getline(std::cin, s); std::cout << "hello " << v[1] << " " << s << std::endl; }',
    "java": 'public class Main { public static void main(String[] a) { System.out.println("hello " + a[0] + " " + new java.util.Scanner(System.in).nextLine()); } }',
}

BROKEN = {
    "go": "package main\nfunc main() { undefined_thing() }",
    "rust": 'fn main() { let x: i32 = "no"; }',
    "c": "int main() { return missing; }",
    "cpp": "int main() { std::vector<int> v; }",
    "java": 'public class Main { public static void main(String[] a) { int x = "no"; } }',
}


def test_table_has_every_language(table: LanguageTable) -> None:
    assert set(table.names()) == {"python", "node", "bash", "ruby", "go", "rust", "c", "cpp", "java"}
    assert (
        table.get("py").name == "python" and table.get("JS").name == "node" and table.get("c++").name == "cpp"
    )


def test_unknown_language_suggests_the_nearest(table: LanguageTable) -> None:
    with pytest.raises(NotFoundError) as exc:
        table.get("pyton")
    assert "Did you mean 'python'" in str(exc.value)


def test_limits_layering_and_caps(table: LanguageTable) -> None:
    java = table.get("java")
    limits = table.limits(java, {"timeout_ms": 2000})
    assert limits.memory_mb == 512 and limits.timeout_ms == 2000  # the language's default, the request's own
    with pytest.raises(SandboxRequestError) as exc:
        table.limits(java, {"memory_mb": 10**6})
    assert "cap" in str(exc.value) and exc.value.fix


def test_table_is_strict() -> None:
    from argosy.core.errors import ConfigError

    with pytest.raises(ConfigError):
        LanguageTable.load(
            "caps: {}\ndefaults: {}\ncompile_defaults: {}\nlanguages: {x: {file: a, toolchain: a, version: [a], run: [a], colour: red}}"
        )


@pytest.mark.parametrize("lang", sorted(HELLO))
def test_hello_in_every_language(runner: LocalRunner, table: LanguageTable, lang: str) -> None:
    if why := toolchain_missing(table, lang):
        pytest.skip(why)
    res = runner.execute(
        ExecRequest(language=lang, code=HELLO[lang], args=["arg"], stdin="line\n", timeout_ms=30000)
    )
    assert res.status == "ok", res.stderr + (res.compile.stderr if res.compile else "")
    assert res.stdout.strip() == "hello arg line"
    assert res.version and res.language == lang
    assert (res.compile is not None) == table.get(lang).compiled


@pytest.mark.parametrize("lang", sorted(BROKEN))
def test_compile_errors_are_reported_as_such(runner: LocalRunner, table: LanguageTable, lang: str) -> None:
    if why := toolchain_missing(table, lang):
        pytest.skip(why)
    res = runner.execute(ExecRequest(language=lang, code=BROKEN[lang], timeout_ms=30000))
    assert res.status == "compile_error"
    assert res.compile is not None and res.compile.exit_code not in (0, None)
    assert res.stderr or res.stdout  # the compiler's message reaches the user


def test_runtime_error_is_not_a_compile_error(runner: LocalRunner) -> None:
    res = runner.execute(ExecRequest(language="c", code="#include <stdlib.h>\nint main() { abort(); }"))
    assert res.status == "error" and res.signal == 6 and res.compile is not None


def test_version_pinning(runner: LocalRunner, table: LanguageTable) -> None:
    have = table.get("python").version()  # "Python 3.11.2"
    res = runner.execute(ExecRequest(language="python", version=have.split()[-1], code="print(1)"))
    assert res.stdout == "1\n"
    with pytest.raises(SandboxRequestError):
        runner.execute(ExecRequest(language="python", version="2.7", code="print(1)"))


def test_files_and_entry_point(runner: LocalRunner) -> None:
    res = runner.execute(
        ExecRequest(
            language="python",
            files={"main.py": "import helper; helper.hi()", "helper.py": "def hi(): print('hi')"},
        )
    )
    assert res.stdout == "hi\n"
    with pytest.raises(SandboxRequestError):
        runner.execute(ExecRequest(language="python", files={"other.py": "print(1)"}))
    with pytest.raises(ValueError):
        ExecRequest(language="python", files={"../escape.py": "x"})
