from flask import Blueprint
from flask.blueprints import BlueprintSetupState

bp = Blueprint("orgs", __name__)


@bp.record_once
def _register_filters(state: BlueprintSetupState) -> None:
    """The audit-log filters are used by the staff area too, so they are app-wide."""
    from portal.orgs.auditlog import register

    register(state.app)


from portal.orgs import invites, leak_settings, members, offboarding, routes  # noqa: E402,F401
