from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, Email, EqualTo, Length

from portal.forms import email_filter, identity_text, no_control_chars, strip_filter
from portal.password_policy import MAX_LENGTH, MIN_LENGTH

PASSWORD_RULES = [DataRequired(), Length(min=10, max=128, message="Use 10 to 128 characters.")]
# Shown under every new-password field before the first submit, so nobody learns the rules by failing them.
PASSWORD_HELP = (
    f"{MIN_LENGTH} to {MAX_LENGTH} characters, hard to guess (a few unrelated words work well),"
    " without your email address."
)


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)], filters=[strip_filter])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=128)])
    remember = BooleanField("Keep me signed in")


EMAIL_RULES = [DataRequired(), Length(max=254), Email(check_deliverability=False), identity_text]


class SignupForm(FlaskForm):
    display_name = StringField(
        "Your name",
        validators=[DataRequired(), Length(max=100), no_control_chars, identity_text],
        filters=[strip_filter],
    )
    email = EmailField("Email", validators=EMAIL_RULES, filters=[email_filter])
    password = PasswordField("Password", validators=PASSWORD_RULES, description=PASSWORD_HELP)


class PasswordChangeForm(FlaskForm):
    current_password = PasswordField("Current password", validators=[DataRequired(), Length(max=128)])
    new_password = PasswordField("New password", validators=PASSWORD_RULES, description=PASSWORD_HELP)
    confirm = PasswordField(
        "Repeat new password", validators=[DataRequired(), EqualTo("new_password", "Passwords do not match.")]
    )


class EmailChangeForm(FlaskForm):
    new_email = EmailField(
        "New email", validators=EMAIL_RULES, filters=[email_filter], description="We send a link there to confirm it."
    )
    password = PasswordField("Your password", validators=[DataRequired(), Length(max=128)])


class ForgotPasswordForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)], filters=[email_filter])


class ResetPasswordForm(FlaskForm):
    new_password = PasswordField("New password", validators=PASSWORD_RULES, description=PASSWORD_HELP)
    confirm = PasswordField(
        "Repeat new password", validators=[DataRequired(), EqualTo("new_password", "Passwords do not match.")]
    )
