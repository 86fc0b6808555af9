"""The capstone task: triage a customer-support message into an intent and a priority.

Every ticket is generated from a seed, so splits repeat exactly and the answer is known. The messages vary in
wording, products, order numbers, amounts, greetings and sign-offs. About a third mention a second topic that is
not the request ("I already got my refund last month, but now the app crashes" is technical), and priority comes
from cues placed anywhere in the message, some only implied ("my flight leaves tonight"), some that contain the
other class's word ("not urgent" is low): looking up one keyword does not solve the task, reading the message does.
The hidden test split comes from the same generator, seeded by a secret, and shares no text with the public splits.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from typing import Sequence

from course_lib.core.tasks import distinct
from course_lib.data.validate import validate_rows
from course_lib.evaluation.classify import per_class_f1

INTENTS = ("billing", "shipping", "refund", "technical", "account", "cancel")
PRIORITIES = ("low", "normal", "urgent")
PRIORITY_WEIGHTS = (0.30, 0.45, 0.25)  # how often each priority is drawn, in the order of PRIORITIES

INSTRUCTION = (
    "Triage the customer-support message. Intents: billing, shipping, refund, technical, account, cancel. "
    "Priorities: low, normal, urgent. Reply with only the intent and the priority, separated by a space."
)

PUBLIC_SEED = 8
# The public splits are a prefix of this many tickets of the public seed's stream; the hidden test split avoids all
# of them, so any public split a learner asks for (up to this size) is disjoint from it.
PUBLIC_POOL = 1000


@dataclass(frozen=True)
class Ticket:
    """One support message with its intent and priority."""

    text: str
    intent: str
    priority: str

    def answer(self) -> str:
        """The exact reply the model should give, e.g. 'refund urgent'."""
        return f"{self.intent} {self.priority}"


# --------------------------------------------------------------------------------------------- vocabulary

_PRODUCTS = (
    "Aero headphones|Nimbus smart speaker|Pixelframe tablet|Trailrunner backpack|Brewmaster grinder|Luma desk lamp|"
    "Orbit fitness watch|Cascade water filter|Zephyr e-bike|Harbor rain jacket|Sprout baby monitor|Vega robot vacuum|"
    "Kite drone|Ember space heater|Mosaic phone case|Tundra sleeping bag|Echo doorbell camera|Sola blender"
).split("|")
_APPS = ("Nimbus app", "companion app", "Orbit app", "mobile app", "web dashboard", "desktop app", "Vega app")
_PLANS = (
    "Premium plan|family plan|Pro membership|coffee club subscription|monthly box subscription|cloud storage plan|"
    "streaming add-on|annual membership|meal kit subscription"
).split("|")
_WHEN = ("last Tuesday", "on March 3", "two weeks ago", "yesterday", "last month", "on the 14th", "ten days ago",
         "over the weekend", "in January", "a few days ago")
_NAMES = ("Maya", "Tomás", "Priya", "Kenji", "Olga", "Liam", "Fatima", "Noah", "Chloé", "Aisha", "Lars", "Mei",
          "Diego", "Ingrid", "Kwame", "Hana", "Sven", "Nadia", "Ravi", "Elif")

# The request itself, by intent. No template holds a priority cue or an all-caps word (caps are an urgent cue).
_REQUESTS: dict[str, list[str]] = {
    "billing": [
        "I was charged {amount} twice for order {order}",
        "my invoice from {when} shows {amount} instead of the usual price",
        "the payment for my {plan} failed but the money still left my account",
        "why did the monthly fee for my {plan} go up to {amount}?",
        "I need an invoice with my company name on it for order {order}",
        "there is a charge of {amount} on my card that I don't recognise",
        "the discount code was not applied, so I paid {amount} for the {product}",
        "please change the card you bill for my {plan}",
        "the tax on the invoice for order {order} looks wrong",
        "my bank statement shows two payments of {amount} for the same order",
        "can you split the {amount} charge for order {order} across two cards?",
        "I was billed {amount} for the {plan} although I'm on the free tier",
    ],
    "shipping": [
        "my {product} from order {order} still hasn't arrived",
        "tracking for order {order} hasn't moved for a week",
        "the courier left my {product} at the wrong address",
        "tracking says order {order} was delivered but there's nothing at my door",
        "can I change the delivery address for order {order}?",
        "the box with my {product} arrived crushed",
        "only half of order {order} was in the parcel",
        "the estimated delivery date for my {product} keeps moving",
        "which courier is bringing order {order}? I need to be home",
        "my parcel with the {product} has been stuck at the depot for days",
        "can you ship the {product} to a pick-up point instead of my house?",
        "the driver never rang the bell and took my {product} back to the warehouse",
    ],
    "refund": [
        "I returned the {product} {when} and I'm still waiting for my {amount}",
        "I want my money back for the {product}, it's not what was advertised",
        "how long does the refund for order {order} take?",
        "you approved my return but the {amount} never reached my card",
        "I'd like a refund instead of a replacement for the {product}",
        "the refund for order {order} was only part of what I paid",
        "can I get my {amount} back if I send the unopened {product} back?",
        "the return of order {order} was accepted {when}, so where is my money?",
        "I was promised a refund of {amount} {when} and nothing has happened",
        "I sent the {product} back, please return the {amount} to my original card",
        "please refund the {amount} for the {product}, I never used it",
        "the {product} broke after a week and I want a full refund",
    ],
    "technical": [
        "the {app} crashes every time I open it",
        "my {product} won't connect to wifi since the update",
        "the {app} freezes on the loading screen",
        "my {product} turns itself off after a few minutes",
        "the firmware update {when} left my {product} stuck on a black screen",
        "the {app} shows error E-{code} when I try to sync my {product}",
        "the battery of my {product} drains overnight",
        "my {product} pairs with my phone but the {app} can't find it",
        "the touchscreen on my {product} stopped responding",
        "notifications from the {app} stopped working {when}",
        "my {product} makes a loud buzzing noise while charging",
        "the {app} won't install on my phone",
    ],
    "account": [
        "I can't log in, the password reset email never comes",
        "please change the email address on my account to my new one",
        "someone else logged into my account {when}",
        "my account got locked after too many login attempts",
        "the two-factor code never arrives on my phone",
        "how do I change the name on my profile?",
        "I want to merge my two accounts into one",
        "I forgot which email address I signed up with",
        "please delete my personal data from my profile",
        "I can't update my phone number in the account settings",
        "my profile shows somebody else's address",
        "the {app} says my account does not exist",
    ],
    "cancel": [
        "please cancel my {plan} before the next renewal",
        "I want to cancel order {order} before it ships",
        "how do I stop my {plan} from renewing?",
        "I ordered the {product} by mistake, please cancel order {order}",
        "please end my {plan} at the end of this month",
        "I no longer need the {plan}, please close it",
        "I'd like to cancel the second {product} in order {order}",
        "I'm moving abroad and want to end my {plan}",
        "please don't send order {order}, I changed my mind",
        "can I still cancel order {order} that I placed {when}?",
        "I want to terminate my {plan} contract",
        "please stop charging me for the {plan}, I'm done with it",
    ],
}
# A mention of another topic that is not the request: the distractor that keeps the task from being keyword lookup.
_ASIDES: dict[str, list[str]] = {
    "billing": ["my last invoice was fine", "the payment itself went through", "I have no problem with the price",
                "I already paid the {amount}", "the billing side is sorted"],
    "shipping": ["the parcel arrived on time", "the delivery itself was fine", "the courier was friendly",
                 "tracking worked fine", "order {order} arrived {when}"],
    "refund": ["I already got my refund last month", "I don't want a refund", "the earlier refund arrived",
               "I'm not asking for my money back", "the refund for my last return came through"],
    "technical": ["the app itself works fine", "the {product} works perfectly", "the update installed fine",
                  "I'm not having any technical problems", "the {app} works again"],
    "account": ["I can log in without problems", "my password works", "my account is fine",
                "I already reset my password", "my login works again"],
    "cancel": ["I don't want to cancel my {plan}", "I'm not cancelling anything", "I'm happy to keep my {plan}",
               "I'm not trying to cancel", "I'm keeping my order"],
}
_GREETINGS = ("", "", "Hi,", "Hello,", "Hey team,", "Dear support,", "Good morning,", "Hi there!", "Hello support,")
_SIGNOFFS = ("", "", "Thanks.", "Thank you!", "Thanks, {name}", "Best, {name}", "Cheers, {name}", "Regards, {name}",
             "- {name}", "Thanks in advance.")

# Priority cues. Explicit ones name the priority; implicit ones only imply it. Some low cues hold the words
# "urgent" and "today", so one word never decides the priority.
_URGENT_FRONT = ("URGENT:", "Urgent -", "ASAP please:", "Emergency!", "This is urgent.", "Please help quickly!")
_URGENT_BACK = (
    "I need this sorted today.", "Please fix this as soon as possible.", "This is urgent.",
    "Please reply immediately, this can't wait.", "I need an answer within the hour.",
    "Please treat this as a priority, it's urgent.", "I need this resolved asap.", "Today, please!",
)
_URGENT_IMPLIED = (
    "My flight leaves tonight and I need this before I go.", "I have a client demo in an hour.",
    "It's a birthday present for tomorrow morning.", "The deadline is at five o'clock today.",
    "My shop opens in an hour and I depend on this.", "I'm travelling first thing tomorrow.",
    "I'm locked out before my flight.", "We have guests arriving tonight.",
)
_LOW_FRONT = ("No rush:", "Not urgent:", "Just curious:", "For my records:", "Out of curiosity,",
              "Low priority question:")
_LOW_BACK = (
    "No rush.", "No rush at all.", "Whenever you can.", "This is not urgent.", "Not urgent, just letting you know.",
    "Take your time.", "There's no hurry on this.", "No need to do this today.", "Next week is totally fine.",
    "Answer whenever you get a chance.", "It can wait until after the holidays.", "I'm only asking for future reference.",
)

_WORD = re.compile(r"[a-z]+")


# ---------------------------------------------------------------------------------------------- generator


def _fill(template: str, rng: random.Random) -> str:
    """A template with its slots filled from the vocabulary."""
    symbol = rng.choice("$$€£")
    amount = (f"{symbol}{rng.randint(5, 400)}.{rng.choice(['00', '49', '99', '95'])}" if rng.random() < 0.7
              else f"{rng.randint(5, 400)} {rng.choice(['dollars', 'euros', 'pounds'])}")
    number = rng.randint(10_000, 9_999_999)
    order = rng.choice([f"#{number}", str(number), f"no. {number}"])
    return template.format(product=rng.choice(_PRODUCTS), app=rng.choice(_APPS), plan=rng.choice(_PLANS),
                           when=rng.choice(_WHEN), amount=amount, order=order, code=rng.randint(100, 999))


def _capital(text: str) -> str:
    return text[0].upper() + text[1:]


def _sentence(text: str) -> str:
    """Capitalised, ending in a full stop unless it already ends in punctuation."""
    text = _capital(text)
    return text if text[-1] in ".?!" else text + "."


def _body(intent: str, rng: random.Random, aside_rate: float) -> str:
    """The request, sometimes with an aside about another topic before or after it."""
    request = _fill(rng.choice(_REQUESTS[intent]), rng)
    if rng.random() >= aside_rate:
        return _sentence(request)
    other = rng.choice([i for i in INTENTS if i != intent])
    aside = _fill(rng.choice(_ASIDES[other]), rng)
    forms = ["{a}, but {r}", "{A}. However, {r}", "{A}. The real problem: {r}"]
    if not request.endswith("?"):  # an aside after a question reads wrong
        forms += ["{r}, although {a}", "{R}. To be clear, {a}", "{R} ({a})"]
    form = rng.choice(forms)
    return _sentence(form.format(a=aside, A=_capital(aside), r=request, R=_capital(request)))


def _shout(body: str, rng: random.Random) -> str:
    """The body with one or two of its longer words in capitals: emphasis that marks a message urgent."""
    words = body.split(" ")
    candidates = [i for i, w in enumerate(words) if w.isalpha() and w.islower() and len(w) >= 4]
    if not candidates:  # nothing to shout: say it instead, so every urgent ticket carries a cue
        return body + " URGENT."
    for i in rng.sample(candidates, min(len(candidates), rng.choice([1, 2]))):
        words[i] = words[i].upper()
    shouted = " ".join(words)
    return rng.choice([shouted, shouted.rstrip(".") + "!!", shouted + " Please help!"])


def _priority_cue(priority: str, rng: random.Random) -> tuple[list[str], list[str], bool]:
    """(cue parts before the body, cue parts after it, whether to shout the body instead); normal has no cue."""
    if priority == "normal":
        return [], [], False
    if priority == "urgent":
        style = rng.choice(["front", "back", "implied", "implied", "caps"])
        if style == "caps":  # the emphasis itself is the cue
            return [], [], True
        cue = rng.choice({"front": _URGENT_FRONT, "back": _URGENT_BACK, "implied": _URGENT_IMPLIED}[style])
    else:
        style = rng.choice(["front", "back", "back"])
        cue = rng.choice({"front": _LOW_FRONT, "back": _LOW_BACK}[style])
    if style == "front" or (style == "implied" and rng.random() < 0.5):
        return [cue], [], False
    return [], [("P.S. " + cue) if rng.random() < 0.2 else cue], False


def _sample(rng: random.Random, aside_rate: float = 0.35) -> Ticket:
    intent = rng.choice(INTENTS)
    priority = rng.choices(PRIORITIES, weights=PRIORITY_WEIGHTS)[0]
    body = _body(intent, rng, aside_rate)
    before, after, shout = _priority_cue(priority, rng)
    if shout:
        body = _shout(body, rng)
    greeting = rng.choice(_GREETINGS)
    signoff = rng.choice(_SIGNOFFS).format(name=rng.choice(_NAMES))
    # a cue before the greeting ("URGENT: Hi, ...") or after it ("Hi, URGENT: ..."); a P.S. after the sign-off
    head = before + [greeting] if rng.random() < 0.5 else [greeting] + before
    ps = [a for a in after if a.startswith("P.S.")]
    parts = head + [body] + [a for a in after if a not in ps] + [signoff] + ps
    return Ticket(text=" ".join(p for p in parts if p), intent=intent, priority=priority)


def make_tickets(n: int, seed: int) -> list[Ticket]:
    """`n` tickets with distinct texts from a seeded generator."""
    rng = random.Random(seed)
    return distinct(lambda: _sample(rng), n, what="tickets")


def public_splits(n_train: int = 400, n_val: int = 100) -> dict[str, list[Ticket]]:
    """The splits learners get: train and validation, no text shared, none in any hidden test split."""
    if n_train < 0 or n_val < 0 or n_train + n_val > PUBLIC_POOL:
        raise ValueError(f"n_train + n_val must be between 0 and {PUBLIC_POOL}, got {n_train} + {n_val}")
    tickets = make_tickets(n_train + n_val, PUBLIC_SEED)
    return {"train": tickets[:n_train], "validation": tickets[n_train:]}


def _secret_seed(secret: str) -> int:
    """A seed only the holder of `secret` can reproduce."""
    return int.from_bytes(hashlib.sha256(secret.encode("utf-8")).digest()[:8], "big")


def hidden_test(secret: str, n: int = 120) -> list[Ticket]:
    """A test split seeded by the instructor's secret, from the same distribution, sharing no text with public data."""
    if not isinstance(secret, str) or not secret:
        raise ValueError("hidden_test needs a non-empty secret string")
    # the whole public pool, not only the default splits: a larger public split still never meets the test
    public = {t.text for t in make_tickets(PUBLIC_POOL, PUBLIC_SEED)}
    rng = random.Random(_secret_seed(secret))

    def sample() -> Ticket:
        while (ticket := _sample(rng)).text in public:
            pass
        return ticket

    return distinct(sample, n, what="hidden test tickets")


# ---------------------------------------------------------------------------------------------- chat rows


def prompt_messages(ticket: Ticket) -> list[dict]:
    """The chat messages that ask for the triage: the instruction as system turn, the message as user turn."""
    return [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": ticket.text}]


def to_messages(ticket: Ticket) -> list[dict]:
    """The full training conversation: the prompt plus the assistant's answer."""
    return prompt_messages(ticket) + [{"role": "assistant", "content": ticket.answer()}]


def to_rows(tickets: Sequence[Ticket]) -> list[dict]:
    """Chat rows {"messages": [...]}, validated against the course tokenizer (raises on the first bad row)."""
    rows = [{"messages": to_messages(t)} for t in tickets]
    validate_rows(rows, on_error="raise")
    return rows


# ------------------------------------------------------------------------------------------------ scoring


def parse_reply(reply: str) -> tuple[str | None, str | None]:
    """(intent, priority): the first allowed word of each kind in the reply, as whole words; None where absent."""
    words = _WORD.findall(reply.lower())
    intent = next((w for w in words if w in INTENTS), None)
    priority = next((w for w in words if w in PRIORITIES), None)
    return intent, priority


def _macro_f1(truth: list[str], predicted: list[str | None], classes: Sequence[str]) -> float:
    """Macro-F1 over the classes that occur in the truth or the readable predictions (scikit-learn's average="macro");
    None is an extra 'invalid' class that counts as wrong but is not averaged over."""
    index = {c: i for i, c in enumerate(classes)}
    invalid = len(classes)
    y_true = [index[t] for t in truth]
    y_pred = [index.get(p, invalid) if p is not None else invalid for p in predicted]
    scores = per_class_f1(y_true, y_pred, num_classes=len(classes) + 1)[: len(classes)]
    seen = [i for i in range(len(classes)) if i in y_true or i in y_pred]
    return sum(scores[i] for i in seen) / len(seen) if seen else 0.0


def score(replies: Sequence[str], tickets: Sequence[Ticket]) -> dict:
    """Intent and priority macro-F1 of replies against tickets, their mean ('score'), n and the unparseable count."""
    if len(replies) != len(tickets):
        raise ValueError(f"{len(replies)} replies for {len(tickets)} tickets: need one reply per ticket")
    if not tickets:
        raise ValueError("no tickets to score")
    parsed = [parse_reply(r) for r in replies]
    intent_f1 = _macro_f1([t.intent for t in tickets], [p[0] for p in parsed], INTENTS)
    priority_f1 = _macro_f1([t.priority for t in tickets], [p[1] for p in parsed], PRIORITIES)
    return {"score": (intent_f1 + priority_f1) / 2, "intent_f1": intent_f1, "priority_f1": priority_f1,
            "n": len(tickets), "invalid": sum(i is None or p is None for i, p in parsed)}
