"""Drives the gateway's dashboard in headless Chromium: the queue counts shown, a task's
detail, and the replay button of a dead letter. Screenshots go to the directory given.

Then a queue paused and resumed from its row (a confirmation dismissed changes nothing), and
two workflows drawn as graphs: one that succeeded, one whose second step failed. Charts over
time, whole and per task type; the task list with its filters, and the tasks that match it
cancelled; the dead letters purged.

Usage: dashboard.py URL TASK_ID DEAD_ID SCREENSHOT_DIR SUCCEEDED_WORKFLOW FAILED_WORKFLOW
    PARENT_ID QUEUED_ID
"""

import datetime
import os
import sys

from playwright.sync_api import expect, sync_playwright


def main() -> int:
    url, task_id, dead_id, shots, succeeded, failed, parent, queued_id = sys.argv[1:9]
    os.makedirs(shots, exist_ok=True)
    chromium = os.environ.get("TASKWIRE_CHROMIUM", "/usr/bin/chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        expect.set_options(timeout=15_000)

        # The overview: four Add tasks wait, and the counts are on the page.
        page.goto(url)
        row = page.locator("#queues tbody tr", has_text="examples.magic.v1.Magic/Add")
        expect(row.locator(".queued")).to_have_text("4")
        expect(page.locator("#queues thead")).to_contain_text("Started /s")
        expect(page.locator("#workers")).to_contain_text("no worker is alive")
        page.screenshot(path=os.path.join(shots, "overview.png"), full_page=True)

        # A schedule in a time zone, with when it fires next; times read relative.
        schedule = page.locator("#schedules tbody tr", has_text="nightly")
        expect(schedule).to_contain_text("(Europe/Berlin)")
        expect(schedule.locator("time")).to_contain_text("in ")
        expect(page.locator("#recent tbody tr time").first).to_contain_text("ago")

        # Charts over time: the tasks that ran, the queue that waits; then one task type.
        expect(page.locator("#chart-rates path.line-succeeded_per_sec")).to_have_count(1)
        expect(page.locator("#chart-rates path.line-submitted_per_sec")).to_have_count(1)
        expect(page.locator("#chart-run path.line-p50")).to_have_count(1)
        expect(page.locator("#chart-depth path.line-depth")).to_have_count(1, timeout=40_000)
        page.select_option("#chart-task", "examples.chaos.v1.Chaos/Flaky")
        expect(page.locator("#chart-rates path.line-failed_per_sec")).to_have_count(1)
        page.screenshot(path=os.path.join(shots, "charts.png"), full_page=True)
        page.select_option("#chart-task", "")

        # The task list: the failed tasks, narrowed by their error; then the delayed ones,
        # cancelled all at once after a confirmation (dismissed, nothing is cancelled).
        page.click("#nav-tasks")
        page.select_option("#list-state", "failed")
        page.click("#list-find")
        expect(page.locator("#tasks tbody tr", has_text="examples.chaos.v1.Chaos/Flaky")).to_have_count(2)
        page.fill("#list-error", "above the limit")
        page.click("#list-find")
        expect(page.locator("#tasks tbody tr")).to_have_count(1)
        expect(page.locator("#tasks")).to_contain_text("examples.flow.v1.Flow/Double")
        page.screenshot(path=os.path.join(shots, "tasks-failed.png"), full_page=True)
        # Finished from tomorrow on: none; finished until tomorrow: the same three.
        page.fill("#list-error", "")
        tomorrow = (datetime.datetime.now() + datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
        page.fill("#list-finished-after", tomorrow)
        page.click("#list-find")
        expect(page.locator("#tasks")).to_contain_text("no task matches")
        page.fill("#list-finished-after", "")
        page.fill("#list-finished-before", tomorrow)
        page.click("#list-find")
        expect(page.locator("#tasks tbody tr", has_text="failed")).to_have_count(3)
        page.fill("#list-finished-before", "")
        page.select_option("#list-state", "")
        page.fill("#list-workflow", succeeded)
        page.click("#list-find")
        expect(page.locator("#tasks tbody tr")).to_have_count(2)
        expect(page.locator("#tasks")).to_contain_text("examples.flow.v1.Flow/Sum")
        page.fill("#list-workflow", "")
        page.fill("#list-parent", parent)
        page.click("#list-find")
        expect(page.locator("#tasks tbody tr", has_text="examples.chaos.v1.Chaos/Sleep")).to_have_count(2)
        page.fill("#list-parent", "")
        page.select_option("#list-state", "scheduled")
        page.click("#list-find")
        expect(page.locator("#tasks tbody tr", has_text="examples.chaos.v1.Chaos/Sleep")).to_have_count(2)
        page.once("dialog", lambda dialog: dialog.dismiss())
        page.click("#list-cancel")
        expect(page.locator("#tasks tbody tr", has_text="scheduled")).to_have_count(2)
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#list-cancel")
        expect(page.locator("#list-done")).to_have_text("cancelled 2")
        expect(page.locator("#tasks")).to_contain_text("no task matches")
        page.select_option("#list-state", "cancelled")
        page.click("#list-find")
        expect(page.locator("#tasks tbody tr", has_text="examples.chaos.v1.Chaos/Sleep")).to_have_count(2)
        page.screenshot(path=os.path.join(shots, "tasks-cancelled.png"), full_page=True)
        page.goto(url)

        # Found by its id from the header: a workflow, and an id that is neither.
        page.fill("#find-id", succeeded)
        page.click("#find button")
        expect(page.locator("#workflow-state")).to_have_text("succeeded")
        page.fill("#find-id", "0" * 32)
        page.click("#find button")
        expect(page.locator("#find-error")).to_contain_text("no task or workflow")
        page.goto(url)

        # A task's detail, opened from the recent tasks.
        page.locator(f'#recent a[href="/tasks/{task_id}"]').click()
        expect(page.locator("#task-state")).to_have_text("succeeded")
        expect(page.locator("#task-ran")).to_contain_text("s")
        expect(page.locator("#task-cancel")).to_have_count(0)
        expect(page.locator("#task-args")).to_contain_text('"arg1"')
        expect(page.locator("#task-result")).to_contain_text('"sum"')
        expect(page.locator("#history")).to_contain_text("queued")
        page.screenshot(path=os.path.join(shots, "task.png"), full_page=True)

        # Replay a dead letter: it leaves the list.
        page.goto(url)
        dead = page.locator("#dead tbody tr", has_text=dead_id)
        expect(dead).to_have_count(1)
        page.once("dialog", lambda dialog: dialog.dismiss())
        dead.locator("button.replay").click()
        expect(page.locator("#dead tbody tr", has_text=dead_id)).to_have_count(1)
        page.once("dialog", lambda dialog: dialog.accept())
        dead.locator("button.replay").click()
        expect(page.locator("#dead tbody tr", has_text=dead_id)).to_have_count(0)
        page.screenshot(path=os.path.join(shots, "replayed.png"), full_page=True)

        # Cancel a queued task from its page, after a confirmation; dismissed, it stays queued.
        page.goto(f"{url}tasks/{queued_id}")
        expect(page.locator("#task-state")).to_have_text("queued")
        page.once("dialog", lambda dialog: dialog.dismiss())
        page.locator("#task-cancel").click()
        expect(page.locator("#task-state")).to_have_text("queued")
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("#task-cancel").click()
        expect(page.locator("#task-state")).to_have_text("cancelled")
        expect(page.locator("#task-cancel")).to_have_count(0)
        page.screenshot(path=os.path.join(shots, "cancelled.png"), full_page=True)
        page.goto(url)

        # Pause the Add queue from its row, after a confirmation; dismissed, nothing changes.
        add = page.locator("#queues tbody tr", has_text="examples.magic.v1.Magic/Add")
        page.once("dialog", lambda dialog: dialog.dismiss())
        add.locator("button.queue-pause").click()
        expect(add).to_contain_text("running")
        page.once("dialog", lambda dialog: dialog.accept())
        add.locator("button.queue-pause").click()
        expect(add.locator(".paused")).to_have_text("paused")
        expect(add.locator("button.queue-resume")).to_have_text("Resume")
        page.screenshot(path=os.path.join(shots, "paused.png"), full_page=True)
        page.once("dialog", lambda dialog: dialog.accept())
        add.locator("button.queue-resume").click()
        expect(add.locator("button.queue-pause")).to_have_text("Pause")
        expect(add).to_contain_text("running")

        # Purge what waits in it, after a confirmation: nothing is left queued.
        page.once("dialog", lambda dialog: dialog.accept())
        add.locator("button.queue-purge").click()
        expect(add.locator(".queued")).to_have_text("0")
        expect(add.locator("button.queue-purge")).to_have_count(0)
        page.screenshot(path=os.path.join(shots, "purged.png"), full_page=True)

        # A workflow that succeeded: each step a node with its state, linked to its task, an
        # arrow from the step it takes its result from; the task's page links back.
        page.goto(f"{url}workflows/{succeeded}")
        expect(page.locator("#workflow-state")).to_have_text("succeeded")
        expect(page.locator("#graph .node")).to_have_count(2)
        expect(page.locator('#graph .node[data-step="sum"]')).to_contain_text("succeeded")
        expect(page.locator("#graph line")).to_have_count(1)
        page.screenshot(path=os.path.join(shots, "workflow.png"), full_page=True)
        page.locator('#graph .node[data-step="double"]').click()
        expect(page.locator("#task-state")).to_have_text("succeeded")
        expect(page.locator("#task-result")).to_contain_text('"total"')
        page.locator("#task-workflow").click()
        expect(page.locator("#workflow-state")).to_have_text("succeeded")

        # One that failed: the failed step, the error, the step never submitted.
        page.goto(f"{url}workflows/{failed}")
        expect(page.locator("#workflow-state")).to_have_text("failed")
        expect(page.locator("#workflow")).to_contain_text("above the limit of 5")
        expect(page.locator('#graph .node[data-step="double"]')).to_have_class("node state-failed")
        expect(page.locator('#graph .node[data-step="again"]')).to_contain_text("skipped")
        page.screenshot(path=os.path.join(shots, "workflow-failed.png"), full_page=True)

        # A task that submitted two children lists them; a child's page links back to it.
        page.goto(f"{url}tasks/{parent}")
        expect(page.locator("#task-state")).to_have_text("succeeded")
        expect(page.locator("#children tbody tr")).to_have_count(2)
        page.locator("#children tbody tr a").first.click()
        expect(page.locator("#task-state")).to_have_text("succeeded")
        page.locator("#task-parent").click()
        expect(page.locator("#children")).to_contain_text("examples.chaos.v1.Chaos/Sleep")
        page.screenshot(path=os.path.join(shots, "children.png"), full_page=True)

        # Purge the dead letters, after a confirmation (dismissed, they stay).
        page.goto(url)
        expect(page.locator("#dead tbody tr").first).to_be_visible()
        page.once("dialog", lambda dialog: dialog.dismiss())
        page.click("#dead-purge")
        expect(page.locator("#dead-purge")).to_be_visible()
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#dead-purge")
        expect(page.locator("#dead")).to_contain_text("no dead letter")
        page.screenshot(path=os.path.join(shots, "dead-purged.png"), full_page=True)
        browser.close()
    print("dashboard checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
