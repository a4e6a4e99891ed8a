"""The operator console in a real browser (issue 19), driven by tests/console_browser.rs.

Debian's Chromium, headless, through Playwright for Python (the pip wheel's driver; no browser
download). The Rust test starts `switchboard serve` and hands this script, in the environment:
SWITCHBOARD_BASE (http://127.0.0.1:<port>), SWITCHBOARD_ADMIN_TOKEN, SWITCHBOARD_WORKER_AGENT,
SWITCHBOARD_WORKER_TOKEN, SWITCHBOARD_SCREENSHOTS (a directory) and optionally
SWITCHBOARD_CHROMIUM (default /usr/bin/chromium).

Steps, each with a screenshot: a wrong token refused and the right one accepted; an
installation added through the form built from the plugin's schema; a conversation arriving on
the session page without reload (a channel webhook, a worker's streamed and completed reply,
a second channel message); operator messages queued behind a run held by a worker, one deleted on the runs page, and
the run interrupted with the session page's button (promoting the rest), checked through the
admin API; the installation switched to the bound policy with its edit form and a newcomer's
pairing code approved on the pairings page; the other pages; phone width; log-out. Exits non-zero with the reason on the first failed check.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

from playwright.sync_api import expect, sync_playwright

BASE = os.environ["SWITCHBOARD_BASE"]
ADMIN = os.environ["SWITCHBOARD_ADMIN_TOKEN"]
AGENT = os.environ["SWITCHBOARD_WORKER_AGENT"]
WORKER_TOKEN = os.environ["SWITCHBOARD_WORKER_TOKEN"]
SHOTS = os.environ["SWITCHBOARD_SCREENSHOTS"]
CHROMIUM = os.environ.get("SWITCHBOARD_CHROMIUM", "/usr/bin/chromium")
WEBHOOK_SECRET = "console_browser_hook_secret"
TIMEOUT_MS = 15_000

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def call(method, path, body=None, token=ADMIN, timeout=20):
    """One HTTP call to the host: (status, parsed JSON body or None)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(BASE + path, data=data, method=method)
    request.add_header("Authorization", "Bearer " + token)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text


def webhook(installation, update_id, text):
    """A channel message delivered to the installation's webhook, as the channel signs it."""
    update = {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "from": {"id": 4242, "is_bot": False, "first_name": "Ada"},
            "chat": {"id": 4242, "type": "private", "first_name": "Ada"},
            "date": int(time.time()),
            "text": text,
        },
    }
    request = urllib.request.Request(
        f"{BASE}/hooks/telegram/{installation}",
        data=json.dumps(update).encode(),
        method="POST",
    )
    request.add_header("Content-Type", "application/json")
    request.add_header("X-Telegram-Bot-Api-Secret-Token", WEBHOOK_SECRET)
    with urllib.request.urlopen(request, timeout=20) as response:
        check(response.status == 200, f"webhook answered {response.status}")


def claim():
    """Claims the agent's next run as a worker (long-polls up to 10 s)."""
    for _ in range(3):
        status, body = call(
            "POST", f"/api/agents/{AGENT}/runs/claim?wait_ms=10000", {}, token=WORKER_TOKEN
        )
        if status == 200 and body.get("kind", "run") == "run":
            return body
        check(status in (200, 204), f"claim answered {status}: {body}")
    fail("no run became pending to claim")


def run_path(run):
    return f"/api/agents/{AGENT}/runs/{run['session_id']}/{run['run_id']}"


def check(condition, message):
    if not condition:
        fail(message)


def fail(message):
    print(f"FAILED: {message}", flush=True)
    sys.exit(1)


def shot(page, name):
    path = os.path.join(SHOTS, name + ".png")
    page.screenshot(path=path, full_page=True)
    print(f"screenshot {path}", flush=True)


def main():
    os.makedirs(SHOTS, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)

        # 1. `/` leads to the login page; a wrong token is refused; the right one signs in.
        page.goto(BASE + "/")
        expect(page).to_have_url(BASE + "/console/login")
        expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        page.get_by_label("Admin token").fill("not-the-admin-token")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_contain_text("not the admin token")
        check(not page.context.cookies(), "a wrong token set a cookie")
        shot(page, "01-login-refused")
        page.get_by_label("Admin token").fill(ADMIN)
        page.get_by_role("button", name="Sign in").click()
        expect(page).to_have_url(BASE + "/console/installations")
        cookies = page.context.cookies()
        check(
            len(cookies) == 1 and cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict",
            f"the session cookie: {cookies}",
        )
        shot(page, "02-signed-in")

        # 2. Add an installation through the form built from the plugin's schema.
        page.get_by_role("link", name="Add an installation").click()
        page.get_by_label("Channel").select_option("telegram")
        page.get_by_role("button", name="Show its settings").click()
        expect(page.get_by_role("heading", name="Settings of a telegram installation")).to_be_visible()
        check(
            page.get_by_label("bot_token (required)").get_attribute("type") == "password",
            "a secret is a password field",
        )
        page.get_by_label("Name (optional)").fill("browser test")
        page.get_by_label("Agent").fill(AGENT)
        page.get_by_label("Debounce window (ms, optional)").fill("100")
        page.get_by_label("bot_username (required)").fill("console_browser_bot")
        page.get_by_label("bot_id (required)").fill("777")
        page.get_by_label("bot_token (required)").fill("123456:console-browser-token")
        page.get_by_label("webhook_secret (optional)").fill(WEBHOOK_SECRET)
        page.get_by_label("Skip the plugin's on-install step").check()
        shot(page, "03-installation-form")
        page.get_by_role("button", name="Add installation").click()
        expect(page).to_have_url(BASE + "/console/installations?done=added")
        expect(page.get_by_role("status")).to_contain_text("Installation added")
        expect(page.get_by_role("cell", name="browser test")).to_be_visible()
        shot(page, "04-installation-added")
        status, installations = call("GET", "/api/installations")
        check(status == 200 and len(installations) == 1, f"installations: {installations}")
        installation = installations[0]
        check(installation["agent"] == AGENT, f"the agent: {installation}")
        check(installation["secrets"] == ["bot_token", "webhook_secret"], f"secrets: {installation}")
        installation = installation["id"]

        # 3. A conversation arrives live on the session page. The worker polls once first, so
        # the agent counts as online.
        status, _ = call("POST", f"/api/agents/{AGENT}/runs/claim?wait_ms=0", {}, token=WORKER_TOKEN)
        check(status == 204, f"the first claim finds nothing: {status}")
        webhook(installation, 1001, "hello from the channel")
        deadline = time.monotonic() + 15
        sessions = []
        while time.monotonic() < deadline and not sessions:
            status, sessions = call("GET", f"/api/sessions?installation={installation}")
            check(status == 200, f"sessions: {status} {sessions}")
            if not sessions:
                time.sleep(0.1)
        check(len(sessions) == 1, f"one session: {sessions}")
        session = sessions[0]["session"]["id"] if "session" in sessions[0] else sessions[0]["id"]
        page.get_by_role("row", name="browser test").get_by_role("link", name="Sessions").click()
        page.get_by_role("link", name=session).click()
        expect(page.locator("#live-status")).to_have_text("connected")
        transcript = page.locator("#transcript")
        expect(transcript).to_contain_text("hello from the channel")
        run = claim()
        check(run["session_id"] == session, f"claimed the session's run: {run}")
        expect(page.locator("#run-state")).to_have_text("running")
        status, _ = call("POST", run_path(run) + "/parts", {"text": "Thinking about "}, token=WORKER_TOKEN)
        check(status in (200, 202, 204), f"parts: {status}")
        expect(page.locator("#streaming")).to_contain_text("Thinking about")
        status, body = call(
            "POST", run_path(run) + "/complete", {"reply": "Reply from the worker: hello, Ada"},
            token=WORKER_TOKEN,
        )
        check(status == 200, f"complete: {status} {body}")
        expect(transcript).to_contain_text("Reply from the worker: hello, Ada")
        expect(page.locator("#run-state")).to_have_text("idle")
        webhook(installation, 1002, "a second message arrives live")
        expect(transcript).to_contain_text("a second message arrives live")
        check(page.locator("#transcript li").count() == 3, "three turns in the transcript")
        shot(page, "05-live-transcript")

        # 4. A run held by a worker, interrupted from the page.
        held = claim()
        check(held["session_id"] == session, f"claimed the second run: {held}")
        expect(page.locator("#run-state")).to_have_text("running")
        # Two operator messages while the run holds the session: queued, the count live.
        for body in ("queued one: to be deleted", "queued two: promoted by the interrupt"):
            status, answer = call("POST", f"/api/sessions/{session}/messages", {"body": body})
            check(status == 202 and answer["queued"], f"submit while running: {status} {answer}")
        expect(page.locator("#queue-count")).to_have_text("2")
        shot(page, "06-run-held")
        # Delete the first from the runs page (the confirmation accepted).
        page.once("dialog", lambda dialog: dialog.accept())
        nav = page.get_by_role("navigation", name="Console")
        nav.get_by_role("link", name="Runs and queues").click()
        card = page.locator(f'section[data-session="{session}"]')
        expect(card).to_contain_text("running")
        card.get_by_role("listitem").filter(has_text="queued one").get_by_role("button", name="Delete").click()
        expect(page.get_by_role("status")).to_contain_text("Queued message deleted")
        status, shown = call("GET", f"/api/sessions/{session}")
        check([q["body"] for q in shown["queue"]] == ["queued two: promoted by the interrupt"],
              f"the queue after the delete: {shown}")
        shot(page, "07-queue-after-delete")
        card.get_by_role("link", name=session).click()
        page.get_by_role("button", name="Interrupt").click()
        expect(page.get_by_role("status")).to_contain_text("Interrupted")
        status, shown = call("GET", f"/api/sessions/{session}")
        check(status == 200, f"session: {status} {shown}")
        check(shown["session"]["state"] != "running", f"still running: {shown}")
        check(shown["session"]["run_id"] != held["run_id"], f"the held run goes on: {shown}")
        status, body = call("POST", run_path(held) + "/heartbeat", {}, token=WORKER_TOKEN)
        check(status == 409 and body.get("continue") is False, f"heartbeat after interrupt: {status} {body}")
        check(shown["queue"] == [], f"the interrupt promoted the queue: {shown}")
        expect(transcript).to_contain_text("queued two: promoted by the interrupt")
        shot(page, "08-run-interrupted")

        # 5. Pairing: the installation is switched to the bound policy with its edit form; a
        # new sender gets a code (read from the outbox, as the sender would read it in the
        # channel), which the operator approves on the pairings page.
        nav = page.get_by_role("navigation", name="Console")
        nav.get_by_role("link", name="Installations").click()
        page.get_by_role("row", name="browser test").get_by_role("link", name="Edit").click()
        expect(page.get_by_label("bot_username (required)")).to_have_value("console_browser_bot")
        page.get_by_label("Access policy").select_option("bound")
        page.get_by_role("button", name="Save changes").click()
        expect(page.get_by_role("status")).to_contain_text("Installation updated")
        status, shown = call("GET", f"/api/installations/{installation}")
        check(shown["access_policy"] == "bound", f"the policy after the edit: {shown}")
        update = {
            "update_id": 2001,
            "message": {
                "message_id": 2001,
                "from": {"id": 5555, "is_bot": False, "first_name": "Newcomer"},
                "chat": {"id": 5555, "type": "private", "first_name": "Newcomer"},
                "date": int(time.time()),
                "text": "may I?",
            },
        }
        request = urllib.request.Request(
            f"{BASE}/hooks/telegram/{installation}", data=json.dumps(update).encode(), method="POST"
        )
        request.add_header("Content-Type", "application/json")
        request.add_header("X-Telegram-Bot-Api-Secret-Token", WEBHOOK_SECRET)
        with urllib.request.urlopen(request, timeout=20) as response:
            check(response.status == 200, f"the newcomer's webhook: {response.status}")
        code = None
        deadline = time.monotonic() + 15
        while code is None and time.monotonic() < deadline:
            status, rows = call("GET", "/api/outbox")
            check(status == 200, f"outbox: {status} {rows}")
            for row in rows:
                notice = row.get("content", {}).get("notice") or {}
                if notice.get("kind") == "binding_required" and notice.get("recipient") == "5555":
                    code = notice.get("detail")
            if code is None:
                time.sleep(0.1)
        check(code is not None, "no pairing code was queued for the newcomer")
        nav.get_by_role("link", name="Pairings").click()
        expect(page.get_by_role("cell", name="5555")).to_be_visible()
        check(code not in page.content(), "the pairings page shows a code")
        page.get_by_label("Pairing code").fill(code)
        shot(page, "09-pairing-pending")
        page.get_by_role("button", name="Approve").click()
        expect(page.get_by_role("status")).to_contain_text("Pairing approved")
        expect(page.get_by_text("No pairing is pending.")).to_be_visible()
        status, bindings = call("GET", f"/api/installations/{installation}/bindings")
        check(status == 200 and "5555" in json.dumps(bindings), f"bindings: {status} {bindings}")
        shot(page, "10-pairing-approved")

        # 6. The other pages render for a signed-in operator.
        for name, heading in [
            ("Plugins", "Plugins"),
            ("Runs and queues", "Runs and queues"),
            ("Drop audit", "Drop audit"),
            ("Metrics", "Metrics"),
        ]:
            nav.get_by_role("link", name=name, exact=True).click()
            expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
        expect(page.get_by_role("cell", name="ingest_events_total").first).to_be_visible()
        shot(page, "11-metrics")

        # 7. At phone width the navigation still fits without a horizontal scroll.
        page.set_viewport_size({"width": 375, "height": 800})
        nav.get_by_role("link", name="Installations").click()
        width = page.evaluate("document.documentElement.scrollWidth")
        check(width <= 375, f"the page is {width} px wide at phone width")
        shot(page, "12-phone-width")

        # 8. Log out: the console is closed again.
        page.get_by_role("button", name="Log out").click()
        expect(page).to_have_url(BASE + "/console/login")
        page.goto(BASE + "/console/sessions")
        expect(page).to_have_url(BASE + "/console/login")
        browser.close()
    print("console browser test: all steps passed", flush=True)


if __name__ == "__main__":
    main()
