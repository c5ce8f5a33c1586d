"""Tools for bench/faults.py: reads with a known truth (so a wrong result can be counted), each
in two declarations, with and without a result validator.

Each read returns its record with an integrity code (as many APIs send an ETag or checksum);
the validators recompute it, so a value that was scaled, swapped, cut or emptied on the way is
caught even when it still looks plausible on its own.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from keel.activities import RetrySpec, tool

RETRY = RetrySpec(max_attempts=4, initial_interval=1)
STOCK = {f"sku{i}": (i * 37) % 900 + 10 for i in range(100)}
PRICES = {f"sku{i}": (i * 53) % 400 + 5 for i in range(100)}
CUSTOMERS = {
    f"c{i}": {"name": f"customer {i}", "tier": ("gold", "silver")[i % 2]} for i in range(50)
}


def code(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "check"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


def sealed(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "check": code(record)}


def intact(value: object, args: dict) -> str | None:
    if not isinstance(value, dict) or "check" not in value:
        return f"not a sealed record: {value!r}"[:200]
    if value["check"] != code(value):
        return "integrity code does not match the record"
    return None


def _stock(sku: str) -> dict[str, Any]:
    return sealed({"sku": sku, "count": STOCK[sku]})


def _prices(skus: list[str]) -> dict[str, Any]:
    return sealed({"skus": skus, "prices": [PRICES[s] for s in skus]})


def _customer(customer_id: str) -> dict[str, Any]:
    return sealed({"id": customer_id, **CUSTOMERS[customer_id]})


stock = tool(name="stock", retry=RETRY, validator=intact)(_stock)
stock_raw = tool(name="stock_raw", retry=RETRY)(_stock)
prices = tool(name="prices", retry=RETRY, validator=intact)(_prices)
prices_raw = tool(name="prices_raw", retry=RETRY)(_prices)
customer = tool(name="customer", retry=RETRY, validator=intact)(_customer)
customer_raw = tool(name="customer_raw", retry=RETRY)(_customer)

TRUTH = {
    "stock": lambda a: _stock(a["sku"]),
    "prices": lambda a: _prices(a["skus"]),
    "customer": lambda a: _customer(a["customer_id"]),
}
