"""A small private "customer database" MCP server for the demo, spoken over stdio.

The gateway starts it on demand inside the private network; the control plane
reaches it only through the tunnel. The data is an in-memory SQLite database
so the demo needs nothing installed.
"""

from __future__ import annotations

import sqlite3

from mcp.server.mcpserver import MCPServer

__all__ = ["build"]

CUSTOMERS = [
    (1, "Acme Corp", "gold", "ops@acme.example"),
    (2, "Globex", "silver", "billing@globex.example"),
    (3, "Initech", "bronze", "finance@initech.example"),
]
INVOICES = [
    ("INV-1001", 1, 12_500.00, "2026-09-30", "paid"),
    ("INV-1002", 1, 8_200.00, "2026-10-31", "overdue"),
    ("INV-1003", 2, 3_150.50, "2026-10-15", "overdue"),
    ("INV-1004", 3, 990.00, "2026-11-30", "open"),
]


def _db() -> sqlite3.Connection:
    db = sqlite3.connect(":memory:", check_same_thread=False)
    db.execute("create table customers (id integer primary key, name text, tier text, email text)")
    db.execute(
        "create table invoices (id text primary key, customer_id integer, amount real, due text, status text)"
    )
    db.executemany("insert into customers values (?, ?, ?, ?)", CUSTOMERS)
    db.executemany("insert into invoices values (?, ?, ?, ?, ?)", INVOICES)
    return db


def build() -> MCPServer:
    db = _db()
    mcp = MCPServer("customer-db", log_level="WARNING")

    @mcp.tool(structured_output=False)
    def find_customer(name: str) -> str:
        """Look a customer up by (part of) its name."""
        rows = db.execute(
            "select id, name, tier from customers where name like ? order by id", (f"%{name}%",)
        ).fetchall()
        if not rows:
            return f"no customer matches {name!r}"
        return "\n".join(f"#{r[0]} {r[1]} (tier: {r[2]})" for r in rows)

    @mcp.tool(structured_output=False)
    def overdue_invoices() -> str:
        """Every overdue invoice, with its customer and amount."""
        rows = db.execute(
            "select i.id, c.name, i.amount, i.due from invoices i join customers c on c.id = i.customer_id "
            "where i.status = 'overdue' order by i.due"
        ).fetchall()
        return "\n".join(f"{r[0]} {r[1]} {r[2]:.2f} EUR due {r[3]}" for r in rows) or "none"

    @mcp.tool(structured_output=False)
    def customer_emails() -> str:
        """Contact addresses (the gateway's perimeter policy may keep this away from the cloud)."""
        return "\n".join(f"{name}: {email}" for _, name, _, email in CUSTOMERS)

    return mcp


if __name__ == "__main__":
    build().run()
