"""Notifications: organization events mailed to the people chosen and sent to signed webhooks.

``events.emit()`` writes an event with its mails and webhook deliveries in the caller's transaction;
``catalogue`` lists the events; ``feed`` reads them back for the organization's pages; ``bell`` is the header's
count of new events and the events page; ``banners`` the quota and expiry warnings on the keys and usage pages;
``rules`` and ``webhooks`` are the settings and webhook endpoint pages' services.
"""

from flask import Blueprint

bp = Blueprint("notify", __name__)

from portal.notify import bell, settings_routes, webhook_routes  # noqa: E402,F401
