"""Each agency batch is masked with its own user's secrets only, on the real server: a
user's log never masks (and so never confirms) another user's secret, and their own is
never stored in the clear."""

from __future__ import annotations

import agency_reds as reds
import pytest

pytestmark = pytest.mark.docker


def red_with_secret(own: str, printed: list[str]) -> dict:
    red = reds.minimal(command=["echo", *printed], value="done")
    red["container"]["settings"]["image"]["auth"] = {"username": "reader", "password": own}
    return red


def test_each_users_log_is_masked_with_their_own_secret_only(make_agency):
    server = make_agency()
    alice_secret, bob_secret = "alice-pass-Qw7x31", "bob-pass-Zr4k58"
    printed = [alice_secret, bob_secret]
    alice = server.batch_ids(server.submit(red_with_secret(alice_secret, printed), user="alice"), user="alice")[0]
    bob = server.batch_ids(server.submit(red_with_secret(bob_secret, printed), user="bob"), user="bob")[0]
    for batch, user in ((alice, "alice"), (bob, "bob")):
        assert server.wait_state(batch, user=user)["state"] == "succeeded"
    assert server.get(f"/batches/{alice}/stdout", user="alice").text == f"******** {bob_secret} done\n"
    assert server.get(f"/batches/{bob}/stdout", user="bob").text == f"{alice_secret} ******** done\n"
