"""The SQLite schema of the store (``CREATE ... IF NOT EXISTS``: applied at every open)."""

from __future__ import annotations

__all__ = ["SCHEMA"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    body TEXT NOT NULL, revision INTEGER NOT NULL, updated_at TEXT NOT NULL,
    PRIMARY KEY (kind, namespace, name));
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY, spiffe_id TEXT NOT NULL, service TEXT NOT NULL, namespace TEXT NOT NULL,
    address TEXT NOT NULL, port INTEGER NOT NULL, plaintext_port INTEGER, admin_port INTEGER,
    labels TEXT NOT NULL, mode TEXT NOT NULL, registered_at TEXT NOT NULL,
    last_seen TEXT NOT NULL, expires_at TEXT NOT NULL,
    applied_version TEXT, rejected_version TEXT, rejection TEXT, source TEXT);
CREATE TABLE IF NOT EXISTS instance_owners (
    id TEXT PRIMARY KEY, spiffe_id TEXT NOT NULL, claimed_at TEXT NOT NULL,
    last_seen TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS instance_owners_by_identity ON instance_owners (spiffe_id, last_seen);
CREATE TABLE IF NOT EXISTS certificates (
    serial TEXT PRIMARY KEY, spiffe_id TEXT NOT NULL, not_before TEXT NOT NULL,
    not_after TEXT NOT NULL, issued_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, spiffe_id TEXT NOT NULL,
    expires_at TEXT NOT NULL, uses_left INTEGER NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rebootstrap (
    id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, spiffe_id TEXT NOT NULL,
    instance_id TEXT NOT NULL, expires_at TEXT NOT NULL, created_at TEXT NOT NULL,
    spent_at TEXT);
CREATE INDEX IF NOT EXISTS rebootstrap_owner ON rebootstrap (spiffe_id, instance_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
