from flask import Blueprint

bp = Blueprint("orgs", __name__)


@bp.record_once
def _register_filters(state):  # type: ignore[no-untyped-def]
    from portal.orgs.auditlog import register

    register(state.app)


from portal.orgs import invites, members, routes  # noqa: E402,F401
