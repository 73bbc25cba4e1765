"""The preference page in a real browser (headless Chromium driven by Playwright, JavaScript off), from
the link of a really sent email: intake, scheduler, dispatcher and an SMTP sink all run. Unticking one
Sequence with the keyboard and saving stops that Sequence's next step while the other's is sent."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from playwright.async_api import Browser, ConsoleMessage, expect

from devstack.mailsink import MailSink
from services.common.config import DatabaseSettings, DispatcherSettings, SchedulerSettings
from services.common.db import connect
from services.common.sequences import apply_sequence, parse_sequence_document
from services.dispatcher.service import run_dispatcher
from services.scheduler.service import run_scheduler
from tests.support.browser import artifacts_dir
from tests.support.intake import running_intake
from tests.support.platform import fetch_all, make_settings, running, smtp_url_of, wait_until
from tests.support.preferences import HOSTILE, TIPS, apply_sequences, enrolled_lead, page_path

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

# The second steps are due this long after enrollment: time enough for the browser to start, open
# the page and save (a few seconds on a loaded machine), short enough to keep the test brief.
FOLLOW_UP_DELAY = "30s"


def sequence(name: str, display_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "healingwork.io/v1alpha1",
        "kind": "Sequence",
        "metadata": {"name": name},
        "spec": {
            "displayName": display_name,
            "trigger": {"sources": ["website"]},
            "steps": [
                {"name": "first", "subject": f"{display_name}: one", "text": "Hello {{ lead.first_name }}"},
                {"name": "second", "delay": FOLLOW_UP_DELAY, "subject": f"{display_name}: two", "text": "Again"},
            ],
        },
    }


async def sent_steps(database_url: str) -> dict[str, list[int]]:
    rows = await fetch_all(
        database_url,
        """SELECT s.name, m.step_position FROM messages m JOIN sequences s ON s.id = m.sequence_id
           WHERE m.status = 'sent' ORDER BY 1, 2""",
    )
    steps: dict[str, list[int]] = {}
    for row in rows:
        steps.setdefault(str(row["name"]), []).append(int(row["step_position"]))  # type: ignore[call-overload]
    return steps


async def test_unticking_a_sequence_in_the_browser_stops_its_next_step_only(
    migrated_database_url: str,
    kafka_bootstrap_servers: str,
    topic_prefix: str,
    mail_sink: MailSink,
    browser: Browser,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    conn = await connect(DatabaseSettings(database_url=migrated_database_url))
    async with conn, conn.transaction():
        for name, display_name in (("news", "Product news"), ("course", "Five-day course")):
            await apply_sequence(conn, parse_sequence_document(sequence(name, display_name), name))
    common = (migrated_database_url, kafka_bootstrap_servers, topic_prefix)
    screenshots = artifacts_dir(tmp_path_factory)

    async with running_intake(*common) as served:
        # The dispatcher signs links to this intake, so the email's link is the page the browser opens.
        dispatcher = make_settings(
            DispatcherSettings,
            *common,
            smtp_url=smtp_url_of(mail_sink),
            hmac_secret=served.settings.hmac_secret,
            public_base_url=served.base_url,
        )
        async with (
            running(run_scheduler, make_settings(SchedulerSettings, *common)),
            running(run_dispatcher, dispatcher),
        ):
            lead = {
                "email": "ann@example.com",
                "first_name": "Ann",
                "source": "website",
                "consent": {"marketing": True},
            }
            response = await served.http.post("/v1/leads", json=lead)
            assert response.status_code in (200, 201, 202), response.text
            async with asyncio.timeout(60):
                received = await mail_sink.wait_for_messages_async(2)
            course_mail = next(m for m in received if str(m["Subject"]).startswith("Five-day course"))
            text = course_mail.get_body(("plain",))
            assert text is not None
            [link] = re.findall(r"^Unsubscribe: (\S+)$", text.get_content(), re.MULTILINE)
            assert link.startswith(f"{served.base_url}/u/")

            context = await browser.new_context(java_script_enabled=False, locale="en-US")
            page = await context.new_page()
            console_errors: list[str] = []

            def on_console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    console_errors.append(message.text)

            page.on("console", on_console)
            response_page = await page.goto(link)
            assert response_page is not None
            assert response_page.status == 200
            await expect(page).to_have_title("Email preferences")
            await expect(page.get_by_text("a***@example.com")).to_be_visible()
            course = page.get_by_role("checkbox", name="Five-day course")
            news = page.get_by_role("checkbox", name="Product news")
            everything = page.get_by_role("checkbox", name=re.compile("^Unsubscribe from everything"))
            await expect(course).to_be_checked()
            await expect(news).to_be_checked()
            await expect(everything).not_to_be_checked()
            await page.screenshot(path=screenshots / "preference-page.png", full_page=True)

            # Keyboard only: the checkboxes in reading order, then "everything", then the button.
            await page.keyboard.press("Tab")
            await expect(course).to_be_focused()
            await page.keyboard.press("Space")
            await expect(course).not_to_be_checked()
            await page.keyboard.press("Tab")
            await expect(news).to_be_focused()
            await page.keyboard.press("Tab")
            await expect(everything).to_be_focused()
            await page.keyboard.press("Tab")
            save = page.get_by_role("button", name="Save preferences")
            await expect(save).to_be_focused()
            async with page.expect_navigation():
                await page.keyboard.press("Enter")

            await expect(page.get_by_role("status")).to_have_text("Your preferences are saved.")
            await expect(page.get_by_role("checkbox", name="Product news")).to_be_checked()
            await expect(page.get_by_role("checkbox", name="Five-day course")).to_have_count(0)
            await page.screenshot(path=screenshots / "preference-page-saved.png", full_page=True)
            assert console_errors == []  # a CSP violation (the stylesheet refused) would be logged here
            await context.close()

            statuses = await fetch_all(
                migrated_database_url,
                "SELECT s.name, e.status FROM enrollments e JOIN sequences s ON s.id = e.sequence_id ORDER BY 1",
            )
            # "completed" here would mean the browser was slower than FOLLOW_UP_DELAY: the test proves nothing.
            assert statuses == [{"name": "course", "status": "cancelled"}, {"name": "news", "status": "active"}]

            async def news_followed_up() -> bool:
                return (await sent_steps(migrated_database_url)).get("news") == [0, 1]

            # Both enrolled at once, so when the news' second step is out, the course's was due too.
            await wait_until(news_followed_up, timeout=120, what="the second step of the Sequence kept")

    assert await sent_steps(migrated_database_url) == {"course": [0], "news": [0, 1]}
    subjects = sorted(str(message["Subject"]) for message in mail_sink.messages())
    assert subjects == ["Five-day course: one", "Product news: one", "Product news: two"]
    assert (screenshots / "preference-page.png").stat().st_size > 0
    assert await fetch_all(migrated_database_url, "SELECT * FROM suppressions") == []


async def test_the_page_fits_a_phone_screen_without_sideways_scrolling(
    migrated_database_url: str,
    kafka_bootstrap_servers: str,
    topic_prefix: str,
    browser: Browser,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Responsive: at 360 px wide nothing overflows and the button spans the width."""
    async with running_intake(migrated_database_url, kafka_bootstrap_servers, topic_prefix) as served:
        await apply_sequences(migrated_database_url, [TIPS, HOSTILE])
        sent = await enrolled_lead(migrated_database_url)
        context = await browser.new_context(viewport={"width": 360, "height": 740}, locale="de-DE")
        page = await context.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: dialogs.append(dialog.message))
        await page.goto(served.base_url + page_path(served.settings, sent["tips"]))

        overflow = await page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        button = await page.get_by_role("button").bounding_box()
        await page.screenshot(path=artifacts_dir(tmp_path_factory) / "preference-page-phone.png", full_page=True)
        await context.close()

    assert overflow <= 0
    assert button is not None
    assert button["width"] >= 300
    assert dialogs == []  # the hostile display name ran no script (alert would open a dialog)
