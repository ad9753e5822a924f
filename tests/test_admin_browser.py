"""The admin page in headless Chromium: a wrong token refused, then the numbers and
charts following real WebSocket clients, and the publish box reaching one."""

from __future__ import annotations

import re
import threading

from playwright.sync_api import expect

from multiproc import Clients, recv
from test_admin import start_admin_server

TOKEN = "browser-admin-token"
TIMEOUT_MS = 10_000


def test_admin_page_follows_clients_and_publishes(browser):
    server = start_admin_server("/admin", TOKEN, "/admin-browser-ws")
    clients = Clients()
    chatting = threading.Event()
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(f"http://127.0.0.1:{server.port}/admin")
        page.fill("#token", "not-the-token")
        page.click("#connect")
        expect(page.locator("#status")).to_have_text("wrong token")
        expect(page.locator("#refusal")).to_be_visible()
        expect(page.locator("#board")).to_be_hidden()

        page.fill("#token", TOKEN)
        page.click("#connect")
        expect(page.locator("#board")).to_be_visible()
        expect(page.locator("#refusal")).to_be_hidden()
        expect(page.locator("#connections")).to_have_text("0")
        expect(page.locator("#processes")).to_have_text("1 / 1")

        url = f"ws://127.0.0.1:{server.port}/admin-browser-ws"
        sockets = [clients.connect(url) for _ in range(4)]
        for ws, room in zip(sockets, ["lobby", "lobby", "lobby", "side"]):
            ws.send(f"join {room}")
            assert recv(ws) == "joined"
        expect(page.locator("#connections")).to_have_text("4")
        expect(page.locator("#rooms-table tr").first).to_have_text("lobby3")
        expect(page.locator("#rooms")).to_have_text("2")

        def chat() -> None:  # messages in, while the page measures them
            while not chatting.wait(0.02):
                sockets[3].send("hello")

        talker = threading.Thread(target=chat, daemon=True)
        talker.start()
        expect(page.locator("#rate-in")).not_to_have_text("0")

        page.fill("#publish-text", "from the admin page")
        page.fill("#publish-room", "lobby")
        page.click("#publish-send")
        expect(page.locator("#publish-result")).to_have_text(
            re.compile(r"published to room lobby at epoch \S+, offset 1")
        )
        epoch = server.recovery.streams.position("lobby")[0]
        assert page.inner_text("#publish-result").endswith(f"epoch {epoch}, offset 1")
        assert all(recv(ws) == "from the admin page" for ws in sockets[:3])
        expect(page.locator("#rate-pub")).not_to_have_text("0")
        expect(page.locator("#rate-out")).not_to_have_text("0")
        expect(page.locator("#processes-table tr")).to_have_count(1)
        expect(page.locator("#redis")).to_have_text("no Redis")
        chart = page.locator("#chart-messages")  # a line of 4 points and more drawn
        expect(chart).to_have_attribute("data-points", re.compile(r"^([4-9]|\d\d+)$"))
        page.screenshot(path="/tmp/admin.png", full_page=True)

        for ws in sockets[:2]:
            ws.close()
        expect(page.locator("#connections")).to_have_text("2")
        expect(page.locator("#rooms-table tr").first).to_have_text("lobby1")

        page.click("#forget")  # the token is gone from the page and its storage
        expect(page.locator("#board")).to_be_hidden()
        assert page.evaluate("sessionStorage.length") == 0
    finally:
        chatting.set()
        clients.close()
        server.stop()
