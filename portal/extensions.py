"""Flask extensions, created unbound and bound to the app in ``create_app``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from flask_login import LoginManager
from flask_sqlalchemy import SQLAlchemy
from flask_sqlalchemy.session import Session as FlaskSession
from flask_wtf import CSRFProtect
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


class PortalSession(FlaskSession):
    """Flask-SQLAlchemy's session, but a session-level ``bind`` wins.

    Flask-SQLAlchemy always picks the app's engine; honouring an explicit bind lets the test suite run every
    test inside one outer transaction that is rolled back afterwards.
    """

    def get_bind(self, mapper: Any = None, clause: Any = None, bind: Any = None, **kwargs: Any) -> Any:
        if bind is None and self.bind is not None:
            return self.bind
        return super().get_bind(mapper=mapper, clause=clause, bind=bind, **kwargs)


db = SQLAlchemy(model_class=Base, session_options={"class_": PortalSession})

# Models subclass ``Model``: at run time Flask-SQLAlchemy's ``db.Model``; for the type checker the typed
# declarative base it is built on, since ``db.Model`` is created dynamically.
if TYPE_CHECKING:
    Model = Base
else:
    Model = db.Model
login_manager = LoginManager()
csrf = CSRFProtect()

__all__ = ["Model", "db", "login_manager", "csrf", "sa"]
