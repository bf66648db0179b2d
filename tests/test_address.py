"""`DatabaseAddress`: a database's path or URL parsed once (URL, file, lock file, display).

Checked against what SQLAlchemy itself reads from the same URL, so the one parse agrees
with the engine that opens it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from timmy.errors import ConfigError
from timmy.storage.address import DatabaseAddress, db_url, describe_db, safe_url, sqlite_file

ROOT = Path(__file__).resolve().parent.parent


def test_a_relative_path_is_an_sqlite_file_relative_to_the_working_directory(tmp_path,
                                                                              monkeypatch):
    monkeypatch.chdir(tmp_path)
    address = DatabaseAddress.parse("data/timmy.db")
    assert address.url == "sqlite:///data/timmy.db"
    assert address.is_sqlite and address.backend == "sqlite"
    assert address.file == Path("data/timmy.db")
    assert address.display == "sqlite:///data/timmy.db"
    assert address.where == str(tmp_path / "data" / "timmy.db")
    assert address.lock_file == tmp_path / "data" / "timmy.db.lock"
    assert address.beside(".token") == tmp_path / "data" / "timmy.db.token"
    assert DatabaseAddress.parse(Path("data/timmy.db")) == address
    assert DatabaseAddress.parse(address) is address


def test_an_sqlite_url_and_its_path_are_one_address(tmp_path):
    path = tmp_path / "t.db"
    assert DatabaseAddress.parse(f"sqlite:///{path}") == DatabaseAddress.parse(str(path))
    assert DatabaseAddress.parse(f"sqlite:///{path}").file == path


def test_the_lock_file_is_beside_the_real_file_however_it_is_spelled(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    address = DatabaseAddress.parse(str(tmp_path / "link" / "t.db"))
    assert address.lock_file == tmp_path / "real" / "t.db.lock"
    assert address.beside(".token") == tmp_path / "link" / "t.db.token"   # as written


@pytest.mark.parametrize("name", ["odd?name.db", "per%cent.db", "hash#tag.db", "sp ace.db",
                                  "plus+sign.db", "colon:db"])
def test_a_path_with_url_characters_names_exactly_that_file(tmp_path, name):
    address = DatabaseAddress.parse(str(tmp_path / name))
    assert address.file == tmp_path / name
    assert sa.engine.make_url(address.url).database == str(tmp_path / name)


@pytest.mark.parametrize("url, file", [
    ("sqlite:///file:data/x.db?uri=true", "data/x.db"),
    ("sqlite:///file:/tmp/a%20b.db?mode=ro&uri=true", "/tmp/a b.db"),
    ("sqlite:///file://localhost/tmp/x.db?uri=true", "/tmp/x.db"),
    ("sqlite:///file:x.db", "file:x.db"),   # without uri=true: a file of that very name
    ("sqlite:///file:mem?mode=memory&uri=true", None),
    ("sqlite:///file:mem?vfs=memdb&uri=true", None),
    ("sqlite://", None),
    ("sqlite:///:memory:", None),
])
def test_a_sqlite_file_uri_names_the_file_sqlite_opens(url, file):
    address = DatabaseAddress.parse(url)
    assert address.is_sqlite and address.url == url
    assert address.file == (None if file is None else Path(file))
    assert sqlite_file(url) == address.file
    assert (address.lock_file is None) == (file is None)
    if address.database and address.database.startswith("file:"):
        assert address.beside(".token") is None


def test_a_server_url_has_no_file_and_its_password_is_masked():
    url = "postgresql+psycopg://timmy:s3cret@db.example.com:5433/swarm"
    address = DatabaseAddress.parse(url)
    assert address.url == url and address.backend == "postgresql" and not address.is_sqlite
    assert address.file is None and address.lock_file is None
    assert address.beside(".token") is None
    assert "s3cret" not in address.display and "s3cret" not in address.where
    assert address.display == "postgresql+psycopg://timmy:***@db.example.com:5433/swarm"
    assert address.where == address.display
    assert safe_url(url) == describe_db(url) == address.display


@pytest.mark.parametrize("text", ["", "   ", "\t"])
def test_an_empty_database_is_a_config_error_with_a_hint(text):
    with pytest.raises(ConfigError) as caught:
        DatabaseAddress.parse(text)
    assert "empty" in caught.value.message and "data/timmy.db" in caught.value.hint


def test_a_url_sqlalchemy_cannot_read_is_a_config_error_with_a_hint():
    with pytest.raises(ConfigError) as caught:
        DatabaseAddress.parse("not a dialect://x")
    assert "not a dialect://x" in caught.value.message
    assert "sqlite:///data/timmy.db" in caught.value.hint
    # the thin functions keep their old answers for such text
    assert sqlite_file("not a dialect://x") is None
    assert safe_url("not a dialect://x") == describe_db("not a dialect://x") == \
        "not a dialect://x"


@pytest.mark.parametrize("url", ["sqlite:///data/timmy.db", "sqlite:////abs/dir/x.db",
                                 "sqlite:///a/b-c_d.db", "sqlite:///x", "sqlite:///./rel.db"])
def test_the_fast_reading_of_a_plain_sqlite_url_is_sqlalchemys(url):
    """Plain sqlite:/// URLs are read without SQLAlchemy: the same answer as with it."""
    parsed = sa.engine.make_url(url)
    address = DatabaseAddress.parse(url)
    assert address.database == parsed.database
    assert address.file == Path(parsed.database)
    assert address.display == parsed.render_as_string(hide_password=True)


def test_a_plain_address_is_read_without_importing_sqlalchemy(tmp_path):
    code = ("import sys\nfrom timmy.storage.address import DatabaseAddress\n"
            "a = DatabaseAddress.parse('sqlite:///data/timmy.db')\n"
            "b = DatabaseAddress.parse('data/timmy.db')\n"
            "print(a.beside('.token'), b.file, a == b, 'sqlalchemy' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(tmp_path / "data/timmy.db.token"), "data/timmy.db",
                                  "True", "False"]


@pytest.mark.parametrize(("value", "url"), [
    ("data/timmy.db", "sqlite:///data/timmy.db"),
    ("/abs/x.db", "sqlite:////abs/x.db"),
    ("x?y.db", "sqlite:///x%3Fy.db"),
    ("sqlite:///as/given.db", "sqlite:///as/given.db"),
    ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
])
def test_db_url_is_the_address_url(value, url):
    assert db_url(value) == url == DatabaseAddress.parse(value).url
