"""Bad arguments exit 2 naming the problem, never with a traceback, and write nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from batchjobs import BatchJobs
from batchjobs.cli import cli
from batchjobs.limits import MAX_BODY_BYTES
from batchjobs.pubsub import Subscription

ENV: dict[str, str | None] = {
    "BATCHJOBS_DB": None,
    "BATCHJOBS_APP": None,
    "BATCHJOBS_REDIS_URL": None,
    "BATCHJOBS_TOKENS": None,
}
TOO_BIG = str(2**63)
DEEP = "[" * 5000 + "]" * 5000
BAD_UTF8 = "\udcff"  # how Python hands over the byte 0xff of a command line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["list", "--limit", TOO_BIG],
            f"Invalid value for '--limit': {TOO_BIG} is not in the range",
        ),
        (["list", "--offset", TOO_BIG], f"Invalid value for '--offset': {TOO_BIG} is not in the"),
        (["list", "--limit", "1001"], "limit must be at most 1000, not 1001"),
        (["list", "--limit", "9" * 5000], "Invalid value for '--limit': "),
        (["list", "--type", BAD_UTF8], "Invalid value for '--type': '\\xff' is not valid UTF-8"),
        (["list", "--user", BAD_UTF8], "Invalid value for '--user': '\\xff' is not valid UTF-8"),
        (["show", BAD_UTF8], "Invalid value for 'ID': '\\xff' is not valid UTF-8 text"),
        (["cancel", BAD_UTF8], "Invalid value for 'ID': '\\xff' is not valid UTF-8 text"),
        (["show", "x" * 5000], f"Batch job with id {'x' * 64}… (5000 characters) was not found"),
        (["create", "words", "--user", BAD_UTF8], "Invalid value for '--user': '\\xff' is not"),
        (["create", BAD_UTF8], "Invalid value for 'TYPE': '\\xff' is not valid UTF-8 text"),
        (["create", "words", "--context", DEEP], "the context is nested more than 64 levels deep"),
        (["create", "words", "--set", f"w={DEEP}"], "the value of w is nested more than 64 levels"),
        (["create", "words", "--set", "w=1e400"], "context.w is inf: numbers must be finite"),
        (["create", "words", "--set", f"{BAD_UTF8}=1"], "Invalid value for '--set': '\\xff=1' is"),
        (
            ["worker", "--poll-interval", "1e308", "--until-idle"],
            "Invalid value for '--poll-interval': '1e308' is more than",
        ),
        (["worker", "--poll-interval", "nan"], "'nan' is not a finite number of seconds"),
        (["worker", "--poll-interval", "0"], "'0' is not more than 0 seconds"),
        (["worker", "--concurrency", TOO_BIG], "Invalid value for '--concurrency': "),
        (["watch", "batch_1", "--timeout", "inf"], "'inf' is not a finite number of seconds"),
        (["serve", "--token", "t=u", "--threads", "0"], "Invalid value for '--threads': 0 is not"),
        (["serve", "--token", f"t{BAD_UTF8}=u"], "not UTF-8 text (the value is not shown"),
        (["events", "--count", TOO_BIG], "Invalid value for '--count': "),
        (["download", "batch_1", "-o", "\ud800"], "'\\ud800' is not a file name this system"),
        (["template", "\ud800"], "Invalid value for 'TYPE': '\\ud800' is not valid UTF-8"),
        (["schedule", "remove", BAD_UTF8], "Invalid value for 'NAME': '\\xff' is not valid"),
        (["schedule", "add", "n", "words", "--tz", BAD_UTF8], "Invalid value for '--tz': "),
    ],
)
def test_a_bad_argument_exits_2_naming_it(db_path: Path, args: list[str], message: str) -> None:
    group = ["--db", str(db_path), "--app", "tests.strategies"]
    result = CliRunner(env=ENV).invoke(cli, [*group, *args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    if db_path.exists():
        with BatchJobs(db_path) as jobs:
            assert jobs.list_and_count(limit=0)[1] == 0


@pytest.mark.parametrize("where", ["file", "stdin"])
def test_a_context_that_is_not_utf8_or_too_large_exits_2(
    db_path: Path, tmp_path: Path, where: str
) -> None:
    group = ["--db", str(db_path), "--app", "tests.strategies", "create", "words", "--context"]
    for data, message in [
        (b'{"words": ["\xff"]}', "the context is not valid JSON: 'utf-8' codec can't decode"),
        (b" " * MAX_BODY_BYTES + b"{}", f"the context is larger than {MAX_BODY_BYTES} bytes"),
    ]:
        source = tmp_path / "context.json"
        source.write_bytes(data)
        args = [*group, "@-" if where == "stdin" else f"@{source}"]
        result = CliRunner(env=ENV).invoke(cli, args, input=data if where == "stdin" else None)
        assert result.exit_code == 2, result.output
        assert message in result.stderr, result.stderr
    with BatchJobs(db_path) as jobs:
        assert jobs.list_and_count(limit=0)[1] == 0


@pytest.mark.parametrize(
    ("group", "message"),
    [
        (["--db", ""], "Invalid value for '--db': is empty: name a SQLite file"),
        (["--db", BAD_UTF8], "Invalid value for '--db': '\\xff' is not valid UTF-8 text"),
        (["--db", "a\x00b"], "Invalid value for '--db': 'a\\x00b' is not a file name"),
        (["--db", "mysql://localhost/jobs"], "Invalid value for '--db': mysql:// databases are"),
        (
            ["--db", "host=db dbname=jobs password=s3cret"],
            "Invalid value for '--db': a libpq key=value connection string is not taken",
        ),
        (["--redis", BAD_UTF8], "Invalid value for '--redis': '\\xff' is not valid UTF-8 text"),
        (["--app", "json:loads"], "json:loads is a function that takes arguments: name a"),
        (["--app", "os:getcwd"], "os:getcwd returned a str, not a BatchJobs"),
        (["--app", "os:sep"], "os:sep is a str, not a BatchJobs"),
    ],
)
def test_the_group_options_are_blamed_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, group: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner(env=ENV).invoke(cli, [*group, "list"])
    assert result.exit_code == 2, result.output
    assert message in result.stderr, result.stderr
    assert "--redis" not in message or "--redis" in group
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def unix_redis(own_redis: Callable[..., str]) -> str:
    """A Redis server of the test's own, listening on a unix socket only."""
    return own_redis()


@pytest.mark.redis
def test_a_unix_socket_redis_url_works(db_path: Path, unix_redis: str) -> None:
    subscription = Subscription(unix_redis, pattern="batch.created")
    assert subscription.connect(report=False), subscription.last_error
    try:
        group = ["--db", str(db_path), "--redis", unix_redis, "--app", "tests.strategies"]
        created = CliRunner(env=ENV).invoke(cli, [*group, "create", "words", "--set", "words=[]"])
        assert created.exit_code == 0, created.output
        event = next(iter(subscription))
        assert (event.event, event.id) == ("batch.created", created.stdout.strip())
        listed = CliRunner(env=ENV).invoke(cli, [*group, "list", "--json"])
        assert listed.exit_code == 0 and created.stdout.strip() in listed.stdout
    finally:
        subscription.close()
