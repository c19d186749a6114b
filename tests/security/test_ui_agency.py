"""The agency's /ui/ (issue 23): a login of its own, each user's experiments only, and forms
that another site cannot submit. A real ``faice agency serve`` (paused: batches stay
registered), real HTTP; the last test drives it from headless Chromium."""

from __future__ import annotations

import io
import json
import re
import zipfile

import agency_reds as reds
import pytest
import requests
from ui_helpers import chromium_available, new_browser

RED_SECRET = "alice-red-secret-5c1e"  # the RED's execution access password
CSRF = re.compile(r'name="csrf" value="([0-9a-f]+)"')


def login(agency, user: str) -> requests.Session:
    """Sign in through the form, as a browser does."""
    session = requests.Session()
    form = session.get(agency.url + "/ui/login", timeout=30)
    assert form.status_code == 200
    answer = session.post(agency.url + "/ui/login", timeout=30, allow_redirects=False,
                          data={"csrf": CSRF.search(form.text).group(1), "username": agency.name(user),
                                "password": agency.users[user]})
    assert answer.status_code == 303, answer.text
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/ui/" in cookie
    return session


@pytest.fixture
def two_users(paused_agency):
    alice = paused_agency.submit(reds.multi_batch(["a1", "a2"], password=RED_SECRET), "alice")
    bob = paused_agency.submit(reds.multi_batch(["bobs-own-value"]), "bob")
    return paused_agency, alice, bob


def test_every_page_needs_a_login(two_users):
    agency, alice, _ = two_users
    for path in ("/ui/", f"/ui/runs/{alice}/", f"/ui/api/runs/{alice}/changes?since=0", "/ui"):
        answer = requests.get(agency.url + path, timeout=30, allow_redirects=False)
        assert answer.status_code in (303, 308), path
        assert alice not in answer.text
    assert requests.get(agency.url + "/ui/", timeout=30).url.startswith(agency.url + "/ui/login")
    basic = requests.get(agency.url + f"/ui/runs/{alice}/", auth=agency.auth("alice"), timeout=30, allow_redirects=False)
    assert basic.status_code == 303  # the pages take their own session, not an API header
    assert requests.get(agency.url + "/ui/static/ui.css", timeout=30).status_code == 200


def test_each_user_sees_only_their_experiments_admins_all(two_users):
    agency, alice, bob = two_users
    as_alice = login(agency, "alice")
    runs = as_alice.get(agency.url + "/ui/", timeout=30).text
    assert f"/ui/runs/{alice}/" in runs and bob not in runs
    page = as_alice.get(agency.url + f"/ui/runs/{alice}/", timeout=30)
    assert page.status_code == 200 and "2 pending" in page.text and page.headers["Content-Security-Policy"]
    bob_batch = agency.batch_ids(bob, "bob")[0]
    for path in (f"/ui/runs/{bob}/", f"/ui/runs/{bob}/batches/{bob_batch}/", f"/ui/api/runs/{bob}/changes?since=0",
                 f"/ui/api/runs/{bob}/batches/{bob_batch}/log/stdout", f"/ui/runs/{bob}/ro-crate.zip",
                 f"/ui/runs/{alice}/batches/{bob_batch}/"):
        answer = as_alice.get(agency.url + path, timeout=30)
        assert answer.status_code == 404, path
        assert "bobs-own-value" not in answer.text
    crate = as_alice.get(agency.url + f"/ui/runs/{alice}/ro-crate.zip", timeout=60)
    assert crate.status_code == 200 and crate.headers["Content-Type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(crate.content)) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    actions = [e for e in json.loads(files["ro-crate-metadata.json"])["@graph"] if e["@type"] == "CreateAction"]
    assert len(actions) == 2 and "red.json" in files and "tool.cwl" in files
    for name, data in files.items():
        assert b"bobs-own-value" not in data and RED_SECRET.encode() not in data, name
    as_root = login(agency, "root")
    everything = as_root.get(agency.url + "/ui/", timeout=30).text
    assert f"/ui/runs/{alice}/" in everything and f"/ui/runs/{bob}/" in everything


def test_forms_from_another_site_are_refused(two_users):
    agency, alice, _ = two_users
    batch = agency.batch_ids(alice)[0]
    # sign in without the form's own cookie and token (a login forged by another site)
    forged = requests.post(agency.url + "/ui/login", timeout=30, allow_redirects=False,
                           data={"username": agency.name("alice"), "password": agency.users["alice"]})
    assert forged.status_code == 403 and "Set-Cookie" not in forged.headers
    session = requests.Session()
    token = CSRF.search(session.get(agency.url + "/ui/login", timeout=30).text).group(1)
    crossed = session.post(agency.url + "/ui/login", timeout=30, allow_redirects=False,
                           headers={"Origin": "http://evil.example"},
                           data={"csrf": token, "username": agency.name("alice"), "password": agency.users["alice"]})
    assert crossed.status_code == 403
    wrong = session.post(agency.url + "/ui/login", timeout=30, data={"csrf": token, "username": agency.name("alice"),
                                                                      "password": "wrong-password"})
    assert wrong.status_code == 401 and "Invalid username or password" in wrong.text
    as_alice = login(agency, "alice")
    cancel = agency.url + f"/ui/runs/{alice}/batches/{batch}/cancel"
    assert as_alice.post(cancel, timeout=30, allow_redirects=False).status_code == 403  # no token
    assert as_alice.post(cancel, timeout=30, allow_redirects=False, data={"csrf": "0" * 64}).status_code == 403
    page = as_alice.get(agency.url + f"/ui/runs/{alice}/batches/{batch}/", timeout=30).text
    token = CSRF.search(page).group(1)
    assert as_alice.post(cancel, timeout=30, allow_redirects=False, data={"csrf": token},
                         headers={"Origin": "http://evil.example"}).status_code == 403
    assert agency.get(f"/batches/{batch}").json()["state"] == "registered"  # nothing of that happened
    assert "POST" not in requests.options(agency.url + "/ui/", timeout=30).headers.get("Allow", "")


def test_cancel_goes_through_the_api_and_its_checks(two_users):
    agency, alice, bob = two_users
    batch = agency.batch_ids(alice)[0]
    bob_batch = agency.batch_ids(bob, "bob")[0]
    as_bob = login(agency, "bob")
    token = CSRF.search(as_bob.get(agency.url + f"/ui/runs/{bob}/batches/{bob_batch}/", timeout=30).text).group(1)
    refused = as_bob.post(agency.url + f"/ui/runs/{alice}/batches/{batch}/cancel", data={"csrf": token}, timeout=30,
                          allow_redirects=False)
    assert refused.status_code == 404
    assert agency.get(f"/batches/{batch}").json()["state"] == "registered"  # bob cannot cancel alice's batch
    as_alice = login(agency, "alice")
    page = as_alice.get(agency.url + f"/ui/runs/{alice}/batches/{batch}/", timeout=30).text
    assert "Cancel this batch" in page
    done = as_alice.post(agency.url + f"/ui/runs/{alice}/batches/{batch}/cancel", timeout=30, allow_redirects=False,
                         data={"csrf": CSRF.search(page).group(1)}, headers={"Origin": agency.url})
    assert done.status_code == 303 and done.headers["Location"] == f"/ui/runs/{alice}/batches/{batch}/"
    document = agency.get(f"/batches/{batch}").json()
    assert document["state"] == "cancelled"
    assert document["history"][-1]["debugInfo"] == f"cancelled by {agency.name('alice')}"  # the API's own cancel
    after = as_alice.get(agency.url + f"/ui/runs/{alice}/batches/{batch}/", timeout=30).text
    assert "data-batch-state>cancelled<" in after and "Cancel this batch" not in after


def test_signing_out_ends_the_session(two_users):
    agency, alice, _ = two_users
    session = login(agency, "alice")
    token = CSRF.search(session.get(agency.url + "/ui/", timeout=30).text).group(1)
    out = session.post(agency.url + "/ui/logout", data={"csrf": token}, timeout=30, allow_redirects=False)
    assert out.status_code == 303
    assert session.get(agency.url + f"/ui/runs/{alice}/", timeout=30, allow_redirects=False).status_code == 303


def test_in_chromium_alice_sees_hers_and_not_bobs(two_users, tmp_path):
    if not chromium_available():
        pytest.skip("Chromium and chromium-driver missing (scripts/infra.sh up installs them)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    agency, alice, bob = two_users
    browser = new_browser()
    try:
        browser.get(agency.url + f"/ui/runs/{alice}/")
        assert "/ui/login" in browser.current_url
        browser.find_element(By.ID, "username").send_keys(agency.name("alice"))
        browser.find_element(By.ID, "password").send_keys(agency.users["alice"])
        browser.find_element(By.CSS_SELECTOR, "form.login button").click()
        # click() returns before the sign-in's redirect is followed: wait for it (at most 10 s)
        WebDriverWait(browser, 10).until(lambda b: b.current_url == agency.url + f"/ui/runs/{alice}/")
        assert browser.find_element(By.CSS_SELECTOR, "[data-run-state]").text == "running"  # registered: pending
        assert len(browser.find_elements(By.CSS_SELECTOR, "tr[data-batch]")) == 2
        browser.get(agency.url + f"/ui/runs/{bob}/")
        assert browser.find_element(By.TAG_NAME, "h1").text == "Not found"
        browser.get(agency.url + "/ui/")
        assert bob not in browser.page_source and alice in browser.page_source
        browser.save_screenshot(str(tmp_path / "agency.png"))
        assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "404" not in e["message"]]
    finally:
        browser.quit()
