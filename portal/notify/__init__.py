"""Notifications: organization events mailed to the people chosen and sent to signed webhooks.

``events.emit()`` writes an event with its mails and webhook deliveries in the caller's transaction;
``catalogue`` lists the events; ``feed`` reads them back for the organization's pages.
"""

from flask import Blueprint

bp = Blueprint("notify", __name__)

from portal.notify import routes  # noqa: E402,F401
