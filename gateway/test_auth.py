"""API keys: parsing, lookup, reload, MT Photos compatibility, header extraction."""

import os

import pytest

from gateway import auth
from gateway.errors import Unauthorized


def test_key_id_is_a_short_hash_not_the_key():
    kid = auth.key_id("sk-secret")
    assert len(kid) == 12 and "secret" not in kid and kid == auth.key_id("sk-secret")


def test_file_line_with_limits():
    key, caller = auth.parse_line("sk-a  name=alice rpm=5 tpm=100 streams=2  # comment")
    assert key == "sk-a" and (caller.name, caller.rpm, caller.tpm, caller.streams) == ("alice", 5, 100, 2)
    assert auth.parse_line("   # only a comment") is None


def test_open_without_keys():
    assert auth.Keys(keys="", keys_file="", mtphotos_key="").check(None) is auth.ANONYMOUS


def test_missing_wrong_right():
    keys = auth.Keys(keys="sk-a, sk-b", keys_file="", mtphotos_key="")
    with pytest.raises(Unauthorized, match="Missing"):
        keys.check(None)
    with pytest.raises(Unauthorized, match="Invalid") as e:
        keys.check("sk-c")
    assert "sk-c" not in e.value.message
    assert keys.check("sk-b").id == auth.key_id("sk-b")


def test_file_is_reread_when_it_changes(tmp_path):
    f = tmp_path / "keys"
    f.write_text("sk-old\n")
    keys = auth.Keys(keys="", keys_file=str(f), mtphotos_key="")
    assert keys.check("sk-old")
    f.write_text("sk-new rpm=1\n")
    os.utime(f, ns=(1, 1))  # a different mtime even within the clock's resolution
    keys._checked = 0
    with pytest.raises(Unauthorized):
        keys.check("sk-old")
    assert keys.check("sk-new").rpm == 1


def test_mtphotos_own_key_only_on_mtphotos_routes():
    keys = auth.Keys(keys="sk-a", keys_file="", mtphotos_key="mt-key")
    assert keys.check("mt-key", mtphotos=True).id == "mtphotos"
    with pytest.raises(Unauthorized):
        keys.check("mt-key", mtphotos=False)
    assert keys.mtphotos_service_key == "mt-key"
    assert auth.Keys(keys="sk-a", keys_file="", mtphotos_key="").mtphotos_service_key == auth.MTPHOTOS_DEFAULT_KEY


def test_presented_key_and_service_key():
    assert auth.presented_key([(b"authorization", b"Bearer sk-a")]) == "sk-a"
    assert auth.presented_key([(b"api-key", b"sk-m")]) == "sk-m"
    assert auth.presented_key([(b"authorization", b"Basic xyz")]) is None
    headers = auth.with_service_key([(b"api-key", b"sk-a"), (b"content-type", b"x")], "svc")
    assert headers == [(b"content-type", b"x"), (b"api-key", b"svc")]
