"""The web console in a real headless Chromium, against a real gateway on a real port.

One browser per module; each test starts its own gateway (fresh database), sets up
what it needs through the API and the data plane, then drives the console in a
thread while the gateway serves. Every page visited is saved to console-shots/ and
checked for browser console errors (a CSP violation or a JS error is one).
"""

from __future__ import annotations

import asyncio
import csv
import io
import time

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser import WAIT, console_errors, phone, shot, start_browser, stop_browser
from tests.fakes import add_key, add_user, chat, ready

pytest_plugins = ["tests.fakes_fixtures"]


@pytest.fixture(scope="module")
def browser():
    driver = start_browser()
    yield driver
    stop_browser(driver)


# -- driving the page (these run in a thread) ------------------------------------
def wait(driver, css: str, text: str | None = None, timeout: float = WAIT):
    """The first element matching css (containing text, if given), once it is visible."""

    def found(d):
        for el in d.find_elements(By.CSS_SELECTOR, css):
            if el.is_displayed() and (text is None or text in el.text):
                return el
        return False

    return WebDriverWait(driver, timeout).until(found, f"no visible {css!r} with {text!r}")


def view(driver, name: str) -> None:
    """Open #/name and wait until it has rendered."""
    driver.execute_script("window.location.hash = arguments[0]", f"#/{name}")
    wait(driver, f'main[data-view="{name}"]')


def fill(driver, form: str, values: dict) -> None:
    for name, value in values.items():
        el = driver.find_element(By.CSS_SELECTOR, f'form[aria-label="{form}"] [name="{name}"]')
        el.clear()
        el.send_keys(str(value))


def submit(driver, form: str, button: str | None = None) -> None:
    css = f'form[aria-label="{form}"] button[type="submit"]'
    buttons = driver.find_elements(By.CSS_SELECTOR, css)
    target = next(b for b in buttons if button is None or b.text == button)
    target.click()


def click(driver, text: str, scope: str = "main") -> None:
    xpath = f'//{scope}//button[normalize-space()="{text}"]'
    WebDriverWait(driver, WAIT).until(EC.element_to_be_clickable((By.XPATH, xpath))).click()


def sign_in(driver, url: str, key: str) -> None:
    driver.get(url + "/console/")
    fill(driver, "Sign in", {"key": key})
    submit(driver, "Sign in")
    wait(driver, 'main[data-view="overview"]')


def page_ok(driver, name: str) -> None:
    """Screenshot the page; no console errors on it; nothing wider than the window."""
    shot(driver, name)
    errors = console_errors(driver)
    assert not errors, f"browser console errors on {name}: {errors}"


# -- the tests ---------------------------------------------------------------------
async def test_sign_in_wrong_key_sign_out_and_a_rotated_key(api, browser):
    uid, key = await add_user(api, credit=30)

    def drive():
        driver = browser
        driver.get(api.url + "/console")  # the redirect to /console/
        assert driver.current_url.endswith("/console/")
        fill(driver, "Sign in", {"key": "sk-Xvs" + "n" * 45})
        submit(driver, "Sign in")
        refused = wait(driver, 'form[aria-label="Sign in"] .error', "invalid").text
        page_ok_but_401(driver)
        assert driver.execute_script("return sessionStorage.length") == 0
        assert "sk-Xvs" not in driver.current_url
        sign_in(driver, api.url, key)
        assert driver.execute_script("return sessionStorage.getItem('xaiproxy.key')") == key
        assert driver.get_cookies() == []
        page_ok(driver, "overview-user")
        click(driver, "Sign out", scope="header")
        wait(driver, 'form[aria-label="Sign in"]')
        assert driver.execute_script("return sessionStorage.length") == 0
        sign_in(driver, api.url, key)
        return refused

    message = await asyncio.to_thread(drive)
    assert "key" in message.lower()
    # The key is rotated elsewhere: the console's next call lands on sign-in with the API's message.
    today = time.strftime("%Y-%m-%d", time.gmtime())
    r = await api.post("/x-root", {"name": str(uid), "confirm": f"{today}-ROTATE-ROOT"})
    assert r.status == 200, r.body

    def after_rotation():
        browser.execute_script("window.location.hash = '#/logs'")
        return wait(browser, 'form[aria-label="Sign in"] .error').text

    message = await asyncio.to_thread(after_rotation)
    r = await api.get("/dashboard/x-user-status", key=key)
    assert r.status == 401 and message == r.body["error"]["message"]
    console_errors(browser)  # the 401s just seen are expected


def page_ok_but_401(driver) -> None:
    """A refused sign-in logs the 401 of its fetch, and nothing else."""
    errors = console_errors(driver)
    assert all("401" in e["message"] for e in errors), errors
    shot(driver, "sign-in-refused")


async def test_a_users_dashboard_shows_real_usage(make_gateway, upstream, browser):
    api = await ready(make_gateway, upstream)
    uid, key = await add_user(api, credit=50, HardLimit=100, SoftLimit=60)
    for model in ("gpt-4o-mini", "gpt-4o-mini", "gpt-4o"):
        r = await api.post("/v1/chat/completions", chat(model), key=key)
        assert r.status == 200, r.body
    await api.gw.store.flush()
    own = (await api.get("/dashboard/bill", key=key)).body
    info = (await api.get("/dashboard/x-user-info", key=key)).body

    def drive():
        sign_in(browser, api.url, key)
        wait(browser, ".bill table.data")
        rows = browser.find_elements(By.CSS_SELECTOR, ".bill table.data tbody tr")
        models = {}
        for row in rows:
            cells = [td.text for td in row.find_elements(By.CSS_SELECTOR, "td")]
            models[cells[0]] = cells
        totals = wait(browser, ".bill .totals").text
        meter = browser.find_element(By.CSS_SELECTOR, "meter#spend-meter")
        charts = browser.find_elements(By.CSS_SELECTOR, ".bill .chart canvas")
        balance = browser.find_element(By.CSS_SELECTOR, ".big").text
        page_ok(browser, "overview-with-usage")
        return models, totals, meter.get_attribute("max"), len(charts), balance

    models, totals, hard, charts, balance = await asyncio.to_thread(drive)
    assert set(models) == {"gpt-4o-mini", "gpt-4o"}
    assert models["gpt-4o-mini"][1] == "2" and models["gpt-4o"][1] == "1"  # requests
    assert f"in {own['total_usage']['requests']} requests" in totals
    assert float(hard) == 100
    assert charts >= 2  # by day and by model, drawn by uPlot
    assert float(balance.replace(",", "")) == pytest.approx(info["balance"]["Balance"], abs=1e-6)
