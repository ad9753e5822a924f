"""The guide's three pages in a real browser (headless Chromium via Playwright)."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from playwright.sync_api import Page, expect

TIMEOUT_MS = 10_000


def open_page(browser, port: int) -> Page:
    """Load the example's page and wait until its WebSocket is open."""
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"http://127.0.0.1:{port}/")
    expect(page.locator("#logs li.open")).to_have_count(1, timeout=TIMEOUT_MS)
    expect(page.locator("#logs li.open")).to_contain_text(f"ws://127.0.0.1:{port}/websocket")
    return page


def messages(page: Page):
    return page.locator("#logs li.message")


def message_text(page: Page, index: int) -> str:
    """The data shown by the index-th message line (after its "message: " label)."""
    return messages(page).nth(index).inner_text().split("message: ", 1)[1]


def assert_no_trouble(page: Page) -> None:
    expect(page.locator("#logs li.error")).to_have_count(0)
    expect(page.locator("#logs li.close")).to_have_count(0)


def test_push_page_receives_multicast_in_two_pages(browser, run_example):
    proc, port = run_example("push.py")
    context = browser.new_context()
    first, second = open_page(context, port), open_page(context, port)

    proc.stdin.write("s\n")
    proc.stdin.flush()
    for page in (first, second):
        expect(messages(page)).to_have_count(1, timeout=TIMEOUT_MS)
        expect(messages(page)).to_contain_text("hello")
        assert message_text(page, 0) == "hello"
        assert_no_trouble(page)

    proc.stdin.write("s\n")
    proc.stdin.flush()
    for page in (first, second):
        expect(messages(page)).to_have_count(2, timeout=TIMEOUT_MS)
        assert message_text(page, 1) == "hello"

    # stopping the server: each page logs a clean close with code 1001
    proc.terminate()
    for page in (first, second):
        expect(page.locator("#logs li.close")).to_have_count(1, timeout=TIMEOUT_MS)
        expect(page.locator("#logs li.close")).to_contain_text("close: clean, code 1001")
    assert proc.wait(timeout=10) == 0
    context.close()


def test_receiving_page_buttons(browser, run_example):
    _, port = run_example("receiving.py")
    page = open_page(browser, port)

    page.click("#index")
    expect(messages(page)).to_have_count(1, timeout=TIMEOUT_MS)
    assert message_text(page, 0) == "index"

    page.click("#create")
    expect(messages(page)).to_have_count(2, timeout=TIMEOUT_MS)
    assert message_text(page, 1) == "create"

    sent = page.locator("#logs li.sent")
    expect(sent).to_have_count(2)
    expect(sent.nth(0)).to_contain_text('{"url":"/websocket/test/index"}')
    assert_no_trouble(page)


def test_advanced_page_buttons(browser, run_example):
    _, port = run_example("advanced.py")
    page = open_page(browser, port)

    page.click("#index")
    expect(messages(page)).to_have_count(1, timeout=TIMEOUT_MS)
    assert json.loads(message_text(page, 0)) == {"hello": "world"}

    page.click("#create")
    expect(messages(page)).to_have_count(2, timeout=TIMEOUT_MS)
    user = json.loads(message_text(page, 1))
    assert user["name"] == "John Doe"
    assert user["enabled"] is True
    uuid.UUID(user["id"])
    datetime.fromisoformat(user["creation"])
    assert "error" not in user
    assert_no_trouble(page)
