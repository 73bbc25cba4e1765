"""check_step_bodies: applying a Sequence composes every step for sample leads exactly as the
dispatcher does, so a template is refused here if and only if it could not be sent."""

from __future__ import annotations

import pytest

from services.common.sequence_templates import InvalidTemplate, StepBody, check_step_bodies


def body(text: str | None = None, html: str | None = None, subject: str = "Hi", name: str = "hello") -> StepBody:
    return StepBody(name=name, delay="0s", subject=subject, html=html, text=text)


def refusal(*bodies: StepBody) -> str:
    with pytest.raises(InvalidTemplate) as raised:
        check_step_bodies(list(bodies), "welcome")
    return str(raised.value)


def test_a_step_using_every_variable_the_dispatcher_offers_is_accepted() -> None:
    every_variable = (
        "{{ lead.email }} {{ lead.first_name }} {{ lead.last_name }} {{ lead.source }}"
        " {{ sequence.name }} {{ sequence.step }} {{ unsubscribe_url }}"
    )

    check_step_bodies([body(text=every_variable, html=f"<p>{every_variable}</p>")], "welcome")


def test_an_unsubscribe_link_placed_by_the_template_is_accepted() -> None:
    check_step_bodies([body(html='<p><a href="{{ unsubscribe_url }}">Leave</a></p>')], "welcome")


def test_a_variable_the_dispatcher_does_not_offer_is_refused_naming_the_step() -> None:
    message = refusal(body(text="ok"), body(text="{{ lead.phone }}", name="later"))

    assert message.startswith("spec.steps[1] (later): template error: ")
    assert "phone" in message


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("{{ 10 // 0 }}", "ZeroDivisionError: integer division or modulo by zero (in the text)"),
        ("{{ [1, 'a'] | sort }}", "TypeError"),
        ('{{ "a" * 50000000 }}', "a repetition would be 50,000,000 long, over the limit of 1,048,576"),
        ("{% for i in range(10 ** 9) %}{% endfor %}", "a range is over the limit of 100,000 items"),
    ],
)
def test_a_template_that_fails_for_any_reason_is_refused_naming_the_step_and_the_error(
    template: str, error: str
) -> None:
    message = refusal(body(text=template))

    assert message.startswith("spec.steps[0] (hello): template error: ")
    assert error in message


def test_a_template_failing_only_for_a_lead_without_a_first_name_is_refused() -> None:
    assert "(in the subject)" in refusal(body(text="x", subject="{{ lead.first_name.upper() }}"))


def test_a_subject_over_the_limit_is_refused() -> None:
    assert "the subject is 1,000 characters, over the limit of 998" in refusal(body(text="x", subject="s" * 1000))
