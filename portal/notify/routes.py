"""Notification pages. The events page and the bell that opens it are in portal/notify/bell.py."""

from __future__ import annotations
