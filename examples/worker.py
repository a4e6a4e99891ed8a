#!/usr/bin/env python3
"""A sample switchboard worker: the whole worker protocol in one file, standard library only.

A worker agent (`kind = "worker"` in `[agents.<name>]`) has no model inside the host: processes
like this one claim its runs over HTTP and answer them. This sample answers every turn with
plain words so it runs anywhere; put a model call in `answer()` to make it useful.

What it shows, in the order a run goes through it:

1. claim      POST /api/agents/{agent}/runs/claim?wait_ms=25000   (long-poll; 204 = nothing)
2. heartbeat  POST …/runs/{session}/{run}/heartbeat               (every heartbeat_interval_ms;
              409 or {"continue": false} = the run was interrupted, edited away or recovered:
              stop at once and post nothing more)
3. parts      POST …/runs/{session}/{run}/parts {"text": delta}    (streamed into the chat)
4. complete   POST …/runs/{session}/{run}/complete {"reply": …}   (or …/fail {"error": …})

A claim of "kind": "compact" is a compaction job: summarise `context.messages` following
`compact.prompt` and complete with the summary as the reply. A turn whose last message has
`meta.action` is a button press (name, value, the user who pressed it); `meta.command` is a chat
command the host does not run itself; `meta.attachments` lists files the user sent.

Run it:

    SWITCHBOARD_WORKER_TOKEN=… python3 examples/worker.py --base-url http://127.0.0.1:8080 --agent coder
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.request

log = logging.getLogger("worker")


class RunLost(Exception):
    """The host took the run back (interrupted, edited away, recovered as stale)."""


class Api:
    """The worker API of one agent."""

    def __init__(self, base_url: str, agent: str, token: str, worker_id: str):
        self.base = f"{base_url.rstrip('/')}/api/agents/{agent}"
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "X-Switchboard-Worker": worker_id,
        }

    def call(self, path: str, body: dict | None = None, timeout: float = 30.0):
        """POSTs (or GETs when body is None and the path is a read) and returns (status, json)."""
        data = None if body is None else json.dumps(body).encode()
        method = "GET" if path.endswith("/context") else "POST"
        request = urllib.request.Request(
            self.base + path, data=data, headers=self.headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                return response.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                payload = json.loads(raw) if raw else None
            except ValueError:
                payload = {"error": raw.decode(errors="replace")}
            return error.code, payload

    def run_call(self, run: dict, verb: str, body: dict | None = None):
        status, payload = self.call(f"/runs/{run['session_id']}/{run['run_id']}/{verb}", body)
        if status == 409:
            raise RunLost(payload)
        if status >= 400:
            raise RuntimeError(f"{verb}: HTTP {status}: {payload}")
        return payload


class Heartbeat(threading.Thread):
    """Beats while a run is worked on; `lost` is set when the host takes the run back."""

    def __init__(self, api: Api, run: dict):
        super().__init__(daemon=True)
        self.api, self.run = api, run
        self.interval = max(run.get("heartbeat_interval_ms", 30000), 100) / 1000
        self.stop = threading.Event()
        self.lost = threading.Event()

    def run(self) -> None:  # noqa: D102 (threading API)
        while not self.stop.wait(self.interval):
            try:
                answer = self.api.run_call(self.run, "heartbeat", {})
            except RunLost:
                self.lost.set()
                return
            except Exception as error:  # a blip: the next beat may pass
                log.warning("heartbeat failed: %s", error)
                continue
            if not answer.get("continue", True):
                self.lost.set()
                return


def last_user_message(messages: list[dict]) -> dict:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message
    return {"body": "", "meta": None}


def answer(context: dict) -> str:
    """The reply to a run's context. Replace with a model call."""
    message = last_user_message(context.get("messages", []))
    meta = message.get("meta") or {}
    if "action" in meta:
        action = meta["action"]
        who = action.get("user") or "someone"
        return f"Button {action.get('name')!r} pressed by {who} with value {action.get('value')!r}."
    if "command" in meta:
        command = meta["command"]
        return f"Command /{command.get('name')} received with arguments {command.get('args')!r}."
    attachments = meta.get("attachments") or []
    if attachments:
        names = ", ".join(a.get("name") or a.get("kind", "file") for a in attachments)
        return f"Received {len(attachments)} attachment(s): {names}."
    return f"You said: {message.get('body', '')}"


def summarise(context: dict, prompt: str) -> str:
    """A compaction summary. Replace with a model call that follows `prompt`."""
    lines = [f"{m.get('role')}: {m.get('body', '')}" for m in context.get("messages", [])]
    summary = "Summary of the conversation so far:\n" + "\n".join(lines)
    return summary[:4000]


def work(api: Api, run: dict, part_delay: float) -> str:
    """Works one claimed run or compaction job to its end; returns how it ended."""
    heartbeat = Heartbeat(api, run)
    heartbeat.start()
    try:
        if run.get("kind") == "compact":
            summary = summarise(run["context"], run["compact"]["prompt"])
            api.run_call(run, "complete", {"reply": summary})
            return "compacted"
        reply = answer(run["context"])
        # Stream the reply word by word, as a model would produce it.
        words = reply.split(" ")
        for index, word in enumerate(words):
            if heartbeat.lost.is_set():
                raise RunLost("heartbeat")
            api.run_call(run, "parts", {"text": word if index == 0 else " " + word})
            time.sleep(part_delay)
        if heartbeat.lost.is_set():
            raise RunLost("heartbeat")
        api.run_call(run, "complete", {"reply": reply})
        return "completed"
    except RunLost:
        log.info("run %s was taken back by the host; dropping it", run["run_id"])
        return "lost"
    except Exception as error:
        log.exception("run %s failed", run["run_id"])
        try:
            api.run_call(run, "fail", {"error": f"worker error: {error}"})
        except Exception:
            pass
        return "failed"
    finally:
        heartbeat.stop.set()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", default=os.environ.get("SWITCHBOARD_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--agent", required=True, help="the worker agent's name ([agents.NAME])")
    parser.add_argument("--worker-id", default=f"sample-{os.getpid()}")
    parser.add_argument("--wait-ms", type=int, default=25000, help="claim long-poll (≤ 60000)")
    parser.add_argument("--max-runs", type=int, default=0, help="exit after this many (0 = never)")
    parser.add_argument("--part-delay", type=float, default=0.05, help="seconds between parts")
    args = parser.parse_args(argv)
    token = os.environ.get("SWITCHBOARD_WORKER_TOKEN")
    if not token:
        parser.error("set SWITCHBOARD_WORKER_TOKEN to the agent's token ([agents.NAME] token)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(message)s")
    api = Api(args.base_url, args.agent, token, args.worker_id)
    done = 0
    while args.max_runs == 0 or done < args.max_runs:
        try:
            status, run = api.call(f"/runs/claim?wait_ms={args.wait_ms}", {}, timeout=args.wait_ms / 1000 + 10)
        except OSError as error:
            log.warning("claim failed (%s); retrying in 1 s", error)
            time.sleep(1)
            continue
        if status == 204:
            continue
        if status != 200:
            log.error("claim refused: HTTP %s: %s", status, run)
            return 2
        outcome = work(api, run, args.part_delay)
        done += 1
        log.info("%s %s of session %s: %s", run.get("kind", "run"), run["run_id"], run["session_id"], outcome)
        print(json.dumps({"kind": run.get("kind", "run"), "session": run["session_id"], "run": run["run_id"], "outcome": outcome}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
