"""The workload of ``lorafleet bench templates``: four prompt templates written the naive way, and requests.

Each naive template does what real prompts often do: a timestamp and request id first (in the system
message), then the policy and reference material, then the user's question, and the few-shot examples after
the question, followed by the customer's data. ``lorafleet optimize templates compile --reorder`` moves the
per-request parts after the static ones. The static parts are 500-900 tokens, the per-request parts ~100,
which is typical of production assistants.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

_HEADER = {"name": "header", "kind": "context", "role": "system",
           "text": "Current date and time: {{ timestamp }}. Request id: {{ request_id }}."}
_VARIABLES = {"timestamp": {"type": "string"}, "request_id": {"type": "string"},
              "question": {"type": "string", "max_length": 2000}, "profile": {"type": "json", "required": False}}

SUPPORT_POLICY = """You are the customer support assistant of Acme Networks, which sells home routers (X1, X2, X2 Pro),
mesh Wi-Fi points (M3) and the Acme Home app. Answer in at most four sentences, in the customer's language.

Policies you must follow:
- Refunds: never promise a refund. Say that a human agent reviews refund requests within two working days, and
  offer to open a refund request.
- Warranty: hardware has a two-year warranty from the delivery date. Damage from water, lightning or opening
  the case is not covered.
- Orders: to answer any question about an order, call lookup_order first. Never guess a delivery date.
- Faults: for a hardware fault, suggest exactly one troubleshooting step, then offer to open a ticket with
  open_ticket. Use severity urgent only if the customer has no internet at all.
- Privacy: never reveal another customer's data, and never ask for passwords or full card numbers.
- Escalation: if the customer is angry or asks for a human twice, open a ticket with severity normal and say
  that an agent will call back within one working day."""

SUPPORT_TOOLS = """Tools (call one by answering with a JSON object {"tool": NAME, "arguments": {...}}):
[{"description":"Look up an order by id; returns status, items, carrier and tracking number.","name":"lookup_order","parameters":{"properties":{"order_id":{"type":"string"}},"required":["order_id"],"type":"object"}},
{"description":"Open a support ticket; returns the ticket number.","name":"open_ticket","parameters":{"properties":{"severity":{"enum":["low","normal","urgent"],"type":"string"},"summary":{"type":"string"}},"required":["summary","severity"],"type":"object"}},
{"description":"Open a refund request for an order; a human agent decides.","name":"request_refund","parameters":{"properties":{"order_id":{"type":"string"},"reason":{"type":"string"}},"required":["order_id","reason"],"type":"object"}},
{"description":"Check whether an address is covered by Acme's fiber partner.","name":"check_coverage","parameters":{"properties":{"postcode":{"type":"string"}},"required":["postcode"],"type":"object"}}]"""

SUPPORT_EXAMPLES = """Here are examples of good answers:
Customer: Can I get my money back for the X2 router? It is too slow.
Assistant: I'm sorry the X2 is not fast enough for you. A human agent reviews refund requests within two working days; shall I open one for your order?
Customer: The light on my router blinks orange.
Assistant: Blinking orange means the router gets no signal from your modem. Please restart the modem, wait two minutes, then restart the router. If it still blinks, I can open a ticket for you.
Customer: Where is my order 88231?
Assistant: {"tool": "lookup_order", "arguments": {"order_id": "88231"}}
Customer: I spilled coffee on the M3, is that covered?
Assistant: Unfortunately liquid damage is not covered by the warranty. I can send you a discount code for a replacement M3 if you like."""

SQL_POLICY = """You are a SQL assistant for the analytics team of an online bookshop. Write one PostgreSQL query that
answers the question, then one sentence explaining it. Use only the tables below. Prefer explicit JOINs, qualify
every column with its table alias, never use SELECT *, and add LIMIT 100 unless the question asks for a single
number. Dates are stored in UTC; the business day starts at 00:00 Europe/Berlin."""

SQL_SCHEMA = """Schema:
CREATE TABLE customers (id bigint PRIMARY KEY, email text NOT NULL, country char(2) NOT NULL,
  created_at timestamptz NOT NULL, is_member boolean NOT NULL DEFAULT false);
CREATE TABLE books (id bigint PRIMARY KEY, isbn text UNIQUE NOT NULL, title text NOT NULL, author_id bigint
  NOT NULL REFERENCES authors(id), genre text NOT NULL, price_cents integer NOT NULL, published_on date);
CREATE TABLE authors (id bigint PRIMARY KEY, name text NOT NULL, country char(2));
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers(id),
  placed_at timestamptz NOT NULL, status text NOT NULL CHECK (status IN ('placed','paid','shipped','returned')),
  total_cents integer NOT NULL);
CREATE TABLE order_items (order_id bigint REFERENCES orders(id), book_id bigint REFERENCES books(id),
  quantity integer NOT NULL, unit_price_cents integer NOT NULL, PRIMARY KEY (order_id, book_id));
CREATE TABLE reviews (id bigint PRIMARY KEY, book_id bigint NOT NULL REFERENCES books(id), customer_id bigint
  NOT NULL REFERENCES customers(id), stars smallint NOT NULL CHECK (stars BETWEEN 1 AND 5), written_at timestamptz);"""

SQL_EXAMPLES = """Here are examples of good answers:
Question: How many members signed up in 2024?
Answer: SELECT count(*) FROM customers c WHERE c.is_member AND c.created_at >= '2024-01-01' AND c.created_at < '2025-01-01';
It counts member accounts created during 2024.
Question: Which five authors sold the most copies?
Answer: SELECT a.name, sum(oi.quantity) AS copies FROM order_items oi JOIN books b ON b.id = oi.book_id JOIN authors a ON a.id = b.author_id GROUP BY a.name ORDER BY copies DESC LIMIT 5;
It sums the quantities of order items per author."""

REVIEW_POLICY = """You review Python pull requests for the payments service. Comment only on real problems, most
important first, at most five comments, each as "file:line: problem. Suggestion." Then give a verdict: approve,
request changes, or comment. The team's rules:
1. Money is integer cents, never float. Currency codes are ISO 4217 strings.
2. Every external call (HTTP, database, queue) has a timeout and is retried at most three times with backoff.
3. No secrets in code or logs; log the payment id, never the card data.
4. Public functions have type hints and a docstring stating units.
5. Database writes that belong together run in one transaction.
6. Tests cover the failure path, not only the happy path.
7. Idempotency: handlers that create payments accept an idempotency key and return the first result on retry."""

REVIEW_EXAMPLES = """Here are examples of good reviews:
Diff: amount = float(request.json["amount"]) * 100
Review: api/charge.py:12: float arithmetic on money loses cents. Parse a decimal string and convert to integer cents.
Verdict: request changes.
Diff: resp = requests.post(PSP_URL, json=payload)
Review: psp/client.py:40: no timeout, so a slow PSP blocks the worker. Pass timeout=5 and retry with backoff.
Verdict: request changes.
Diff: logger.info("charged %s", payment.id)
Review: no problems found.
Verdict: approve."""

HR_POLICY = """You answer employees' questions about the travel and expenses policy of Northwind GmbH. Quote the
rule you rely on by its number. If the policy does not cover the question, say so and refer to travel@northwind.example."""

HR_DOCUMENT = """Travel and expenses policy (version 7):
T1. Business trips need approval from the team lead before booking, in the travel tool.
T2. Trains are preferred for trips under 600 km; second class, or first class for trips longer than four hours.
T3. Flights are economy class. Premium economy is allowed for flights longer than eight hours.
T4. Hotels: up to 150 EUR per night in Germany, 200 EUR in London, Paris and Zurich, 180 EUR elsewhere.
T5. Per diem for meals: 28 EUR per full day, 14 EUR for arrival and departure days. Meals paid by the company
    (conference lunches, client dinners) reduce the per diem: breakfast 20 %, lunch and dinner 40 % each.
T6. Taxis only when public transport is unavailable or after 22:00; ride-sharing counts as taxi.
T7. Private car: 0.30 EUR per km, only if cheaper than the train ticket or approved in advance.
E1. Submit expenses within 30 days of the trip, with itemized receipts. Card slips alone are not receipts.
E2. Client entertainment needs the names of all guests and their companies.
E3. Alcohol is reimbursed only at client dinners, up to 30 EUR per person.
E4. Lost receipts: a signed statement is accepted up to 50 EUR per trip.
E5. Reimbursements are paid with the next salary if submitted by the 20th of the month."""

HR_EXAMPLES = """Here are examples of good answers:
Question: Can I book first class to Hamburg? It is 3 hours by train.
Answer: No. Under T2, first class is allowed only for train trips longer than four hours, so please book second class.
Question: I lost my taxi receipt of 35 EUR.
Answer: Under E4 you can submit a signed statement instead, since it is below 50 EUR per trip."""


def _naive(name: str, statics: list[tuple[str, str, str]], examples: str) -> dict[str, Any]:
    """A naive template: header first, statics, the question, the examples after it, then the profile."""
    sections = [_HEADER] + [{"name": n, "kind": k, "text": t} for n, k, t in statics] + [
        {"name": "question", "kind": "user", "text": "Question: {{ question }}"},
        {"name": "examples", "kind": "examples", "role": "user", "text": examples},
        {"name": "profile", "kind": "context", "text": "{% if profile %}About me: {{ profile | canonical_json }}{% endif %}"},
    ]
    return {"name": name, "version": 1, "variables": _VARIABLES, "sections": sections}


TEMPLATES: dict[str, dict[str, Any]] = {
    "support": _naive("support", [("policy", "system", SUPPORT_POLICY), ("tools", "tools", SUPPORT_TOOLS)], SUPPORT_EXAMPLES),
    "sql": _naive("sql", [("policy", "system", SQL_POLICY), ("schema", "document", SQL_SCHEMA)], SQL_EXAMPLES),
    "review": _naive("review", [("policy", "system", REVIEW_POLICY)], REVIEW_EXAMPLES),
    "travel": _naive("travel", [("policy", "system", HR_POLICY), ("document", "document", HR_DOCUMENT)], HR_EXAMPLES),
}

QUESTIONS: dict[str, tuple[str, ...]] = {
    "support": ("Where is my order {n}?", "My {p} keeps rebooting every {h} hours, what can I do?",
                "Can I return the {p}? I bought it {h} weeks ago.", "The {p} light is solid orange since this morning.",
                "Is water damage on the {p} covered by the warranty?", "I want to talk to a human about order {n}."),
    "sql": ("How many orders were returned in {y}?", "What is the average review score of books published after {y}?",
            "Which {h} customers spent the most in {y}?", "How many members from each country ordered in {y}?",
            "What share of orders placed in {y} were shipped?", "List books with more than {h} five-star reviews."),
    "review": ("Diff: total = sum(float(i.price) for i in items)  # order {n}",
               "Diff: db.execute(insert_payment); db.execute(update_balance)  # {h} writes",
               "Diff: log.info('card %s', card_number)  # ticket {n}", "Diff: def refund(payment_id, amount): ...  # v{h}",
               "Diff: requests.get(RATES_URL, timeout=None)  # build {n}", "Diff: retry(charge, attempts={h})"),
    "travel": ("Can I book a hotel for {n} EUR per night in Paris?", "Is a {h}-hour flight allowed in premium economy?",
               "I drove {n} km with my own car, what do I get?", "Can I take a taxi at {h}:30 in the evening?",
               "How much per diem do I get for a {h}-day trip?", "I forgot to submit expenses from {y}, is it too late?"),
}
PRODUCTS = ("X1 router", "X2 router", "X2 Pro", "M3 mesh point")


@dataclass(frozen=True, slots=True)
class BenchRequest:
    template: str
    variables: dict[str, Any]


def make_requests(num_requests: int, seed: int) -> list[BenchRequest]:
    """``num_requests`` requests spread evenly over the templates, shuffled, with increasing timestamps."""
    rnd = random.Random(seed)
    names = [list(TEMPLATES)[i % len(TEMPLATES)] for i in range(num_requests)]
    rnd.shuffle(names)
    clock = datetime(2025, 3, 14, 9, 0, 0, tzinfo=timezone.utc)
    out = []
    for name in names:
        clock += timedelta(seconds=rnd.randint(1, 90))
        question = rnd.choice(QUESTIONS[name]).format(n=rnd.randint(10000, 99999), p=rnd.choice(PRODUCTS),
                                                      h=rnd.randint(2, 12), y=rnd.randint(2019, 2025))
        variables: dict[str, Any] = {"timestamp": clock.isoformat().replace("+00:00", "Z"),
                                     "request_id": f"req_{rnd.getrandbits(40):010x}", "question": question}
        if rnd.random() < 0.7:
            variables["profile"] = {"name": rnd.choice(("Ada", "Lin", "Sam", "Noor", "Kai")), "plan": rnd.choice(("free", "pro")),
                                    "country": rnd.choice(("DE", "FR", "NL", "PL")), "customer_since": rnd.randint(2015, 2025)}
        out.append(BenchRequest(name, variables))
    return out


def template_yaml(name: str) -> str:
    """The naive template ``name`` as YAML (what the bench writes and compiles)."""
    import yaml

    return yaml.safe_dump(TEMPLATES[name], sort_keys=False, allow_unicode=True, width=1000)
