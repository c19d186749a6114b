"""Redaction of protected values (DESIGN §5)."""

from __future__ import annotations

import json

from faice.secrets import MASK, Redactor, normalise_protected_keys, protected_values


def test_masks_raw_json_escaped_and_repr_forms_of_a_secret_with_regex_characters():
    redactor = Redactor()
    secret = 'p@ss.*(w)rd\\"x'
    redactor.add(secret)
    text = f"raw {secret} json {json.dumps({'password': secret})} repr {secret!r}"
    masked = redactor.redact(text)
    assert secret not in masked
    assert json.dumps(secret)[1:-1] not in masked
    assert masked.count(MASK) == 3


def test_longer_secret_wins_over_its_prefix():
    redactor = Redactor()
    redactor.add("abcd", "abcdefgh")
    assert redactor.redact("x abcdefgh y") == f"x {MASK} y"


def test_short_variable_values_are_masked_only_under_protected_keys():
    redactor = Redactor()
    redactor.add_variable("22")  # a port filled from {{ssh_port}}
    redactor.add_variable("alice")
    assert redactor.redact("port 22 user alice") == f"port 22 user {MASK}"
    redactor.add_all(protected_values({"auth": {"password": "pw1"}}))
    assert redactor.redact("pw1") == MASK


def test_a_one_letter_password_does_not_mask_every_letter():
    """A protected value of fewer than 3 characters cannot be hidden: masking it would turn
    every message into noise (`password: x` masks every x), so it is not masked at all."""
    redactor = Redactor()
    redactor.add_all(protected_values({"auth": {"password": "x"}}))
    assert redactor.redact("exit-code, max retries exceeded") == "exit-code, max retries exceeded"


def test_records_keep_their_shape_whatever_secret_is_registered(tmp_path):
    """Records are masked value by value, never as JSON text: a secret that equals a key or
    spans JSON syntax cannot break the record."""
    import json

    from faice.pipeline.records import new_batch_record
    from faice.pipeline.rundir import RunDir

    redactor = Redactor(["batchIndex", '", "', "3cr3t-value"])
    record = new_batch_record("b-1", 0, {"lr": "3cr3t-value"}, run_id="r", command=["echo", "ok"])
    RunDir(tmp_path).write_record(record, redact=redactor.redact)
    data = json.loads((tmp_path / "batches" / "b-1" / "result.json").read_text())
    assert data["batchIndex"] == 0 and data["parameters"] == {"lr": MASK}
    assert RunDir(tmp_path).read_record("b-1") is not None


def test_protected_values_and_normalisation():
    data = {"access": {"_username": "u", "auth": {"password": 7, "_token": {"x": "y"}}, "host": "h"}}
    assert sorted(protected_values(data)) == ["7", "u", "y"]
    assert normalise_protected_keys(data) == {"access": {"username": "u", "auth": {"password": 7, "token": {"x": "y"}}, "host": "h"}}


def test_redact_data_masks_keys_and_values_recursively():
    redactor = Redactor()
    redactor.add("s3cret")
    assert redactor.redact_data({"a": ["s3cret", 1], "s3cret": None}) == {"a": [MASK, 1], MASK: None}
