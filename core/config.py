"""The one settings object, read from the environment and `.env` (see .env.example)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True
    )

    database_url: str = Field("sqlite:///data/mimic.db", validation_alias="DATABASE_URL")
    data_dir: Path = Field(Path("data"), validation_alias="MIMIC_DATA_DIR")

    # Secrets are SecretStr so that repr(), logs and error messages show '**********'.
    slack_bot_token: SecretStr | None = Field(None, validation_alias="SLACK_BOT_TOKEN")
    slack_app_token: SecretStr | None = Field(None, validation_alias="SLACK_APP_TOKEN")
    slack_signing_secret: SecretStr | None = Field(None, validation_alias="SLACK_SIGNING_SECRET")
    slack_api_url: str = Field("https://slack.com/api/", validation_alias="SLACK_API_URL")

    admins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="MIMIC_ADMINS"
    )
    retrain_cron: str = Field("0 3 * * *", validation_alias="MIMIC_RETRAIN_CRON")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", validation_alias="MIMIC_DEVICE")
    channels: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="MIMIC_CHANNELS"
    )

    # Training: a person or public channel needs this much text to get a vector of their own
    # in the shared model (and a private channel, a dedicated model).
    min_chars: int = Field(1000, ge=1, validation_alias="MIMIC_MIN_CHARS")
    # Minutes for the shared model, and for each dedicated model (a fine-tune for one target).
    base_minutes: float = Field(10.0, gt=0, validation_alias="MIMIC_BASE_MINUTES")
    target_minutes: float = Field(2.0, gt=0, validation_alias="MIMIC_TARGET_MINUTES")
    # How many people (those with the most text) also get a dedicated model in a full run.
    dedicated: int = Field(0, ge=0, validation_alias="MIMIC_DEDICATED")
    # Training processes (torchrun workers): CPU cores share out, on GPUs one worker per GPU.
    nproc: int = Field(1, ge=1, validation_alias="MIMIC_NPROC")
    # The training step's products (TrainConfig.precision): auto is bfloat16 on GPUs and on
    # CPUs where a step measures faster so (AMX), float32 elsewhere.
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", validation_alias="MIMIC_PRECISION")

    # Each export walks every channel's last days again to notice messages deleted in Slack.
    recheck_days: float = Field(30.0, ge=0, validation_alias="MIMIC_RECHECK_DAYS")

    # opt-out: everyone may be imitated until they `/mimic optout`; opt-in: nobody until they
    # `/mimic optin`.
    consent: Literal["opt-out", "opt-in"] = Field("opt-out", validation_alias="MIMIC_CONSENT")
    # The Slack app: how many /mimic requests one person may make per minute.
    rate_limit: int = Field(5, ge=1, validation_alias="MIMIC_RATE_LIMIT")
    # `mimic serve` as this many processes, each with its own interpreter and model: answers
    # no longer queue for one interpreter lock (bench/latency.py --processes).
    serve_processes: int = Field(1, ge=1, le=64, validation_alias="MIMIC_SERVE_PROCESSES")
    # Replies posted into threads (mentions, shortcuts) under the person's display name plus
    # " (mimic)" and their avatar ("name"; needs the chat:write.customize scope), or as mimic.
    post_as: Literal["off", "name"] = Field("off", validation_alias="MIMIC_POST_AS")

    @field_validator("slack_bot_token", "slack_app_token", "slack_signing_secret",
                     mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # .env.example ships `SLACK_SIGNING_SECRET=`: an empty key must never count as a key
        # (requests signed with it would be accepted), so blank means "not set" everywhere.
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("retrain_cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        # Refused at start-up: a scheduler would otherwise only fail when it comes to run.
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value)
        except ValueError as exc:
            raise ValueError(f"not a crontab line (minute hour day month weekday, e.g. "
                             f"'0 3 * * *'): {exc}") from None
        return value

    @field_validator("admins", "channels", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("channels")
    @classmethod
    def _strip_hash(cls, value: list[str]) -> list[str]:
        return [name.lstrip("#").lower() for name in value]

    @field_validator("slack_api_url")
    @classmethod
    def _trailing_slash(cls, value: str) -> str:
        # slack_sdk joins base_url + method name, so the slash matters.
        return value if value.endswith("/") else value + "/"

    def channel_allowed(self, name: str) -> bool:
        """True when no allowlist is set or the channel is on it."""
        return not self.channels or name.lower() in self.channels


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
