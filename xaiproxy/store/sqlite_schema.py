"""Versioned schema migrations, applied in order at start (PRAGMA user_version).

Money columns ending in `_n` are integers in nano base units (1e-9 USD at Rates 1).
Append new migrations at the end; never edit one that has shipped.
"""

MIGRATIONS: list[str] = [
    # 1: the whole first schema
    """
    CREATE TABLE accounts (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE,
        email TEXT NOT NULL UNIQUE COLLATE NOCASE,
        alias TEXT NOT NULL DEFAULT '',
        billing_email TEXT NOT NULL DEFAULT '',
        parent_id INTEGER,
        dna TEXT NOT NULL,
        level INTEGER NOT NULL,
        status INTEGER NOT NULL DEFAULT 1,
        rates REAL NOT NULL DEFAULT 1.0,
        factor REAL NOT NULL DEFAULT 1.0,
        hard_limit REAL NOT NULL DEFAULT 0,
        soft_limit REAL NOT NULL DEFAULT 0,
        rpm INTEGER NOT NULL DEFAULT 0, rph INTEGER NOT NULL DEFAULT 0,
        rpd INTEGER NOT NULL DEFAULT 0, tpm INTEGER NOT NULL DEFAULT 0,
        tph INTEGER NOT NULL DEFAULT 0, tpd INTEGER NOT NULL DEFAULT 0,
        allow_ips TEXT NOT NULL DEFAULT '',
        allow_models TEXT NOT NULL DEFAULT '',
        resources TEXT NOT NULL DEFAULT '',
        model_limits TEXT NOT NULL DEFAULT '{}',
        child_limit INTEGER NOT NULL DEFAULT 1000,
        gear INTEGER NOT NULL DEFAULT 0,
        role INTEGER NOT NULL DEFAULT 0,
        tier INTEGER NOT NULL DEFAULT 0,
        owner INTEGER NOT NULL DEFAULT 0,
        credit_granted REAL NOT NULL DEFAULT 0,
        key_hash TEXT NOT NULL UNIQUE,
        key_prefix TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX accounts_parent ON accounts(parent_id);
    CREATE INDEX accounts_dna ON accounts(dna);

    CREATE TABLE grants (
        id INTEGER PRIMARY KEY,
        account_id INTEGER NOT NULL,
        amount_n INTEGER NOT NULL,
        remaining_n INTEGER NOT NULL,
        granted_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        reference TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX grants_account ON grants(account_id, expires_at);

    -- Journal of every money movement between accounts (root mints, fees burn).
    CREATE TABLE transfers (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        from_id INTEGER NOT NULL,
        to_id INTEGER NOT NULL,
        amount_n INTEGER NOT NULL,
        fee_n INTEGER NOT NULL DEFAULT 0,
        kind TEXT NOT NULL,
        operator_id INTEGER NOT NULL
    );

    CREATE TABLE provider_keys (
        id INTEGER PRIMARY KEY,
        owner_id INTEGER NOT NULL,
        name TEXT NOT NULL DEFAULT '',
        level INTEGER NOT NULL DEFAULT 1,
        provider TEXT NOT NULL,
        secret TEXT NOT NULL,
        status INTEGER NOT NULL DEFAULT 1,
        config TEXT NOT NULL DEFAULT '{}',
        sleep_until REAL NOT NULL DEFAULT 0,
        sleep_reason TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX provider_keys_owner ON provider_keys(owner_id, level);

    CREATE TABLE owner_config (
        owner_id INTEGER NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (owner_id, key)
    );
    CREATE TABLE config_version (
        owner_id INTEGER PRIMARY KEY,
        version INTEGER NOT NULL
    );

    CREATE TABLE usage (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        account_id INTEGER NOT NULL,
        owner_id INTEGER NOT NULL,
        dna TEXT NOT NULL,
        model TEXT NOT NULL,
        upstream_model TEXT NOT NULL DEFAULT '',
        level INTEGER NOT NULL DEFAULT 0,
        key_id INTEGER NOT NULL DEFAULT 0,
        path TEXT NOT NULL DEFAULT '',
        prompt_tokens INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        cached_tokens INTEGER NOT NULL DEFAULT 0,
        cost REAL NOT NULL DEFAULT 0,
        cost_n INTEGER NOT NULL DEFAULT 0,
        status INTEGER NOT NULL DEFAULT 200,
        latency_ms REAL NOT NULL DEFAULT 0,
        estimated INTEGER NOT NULL DEFAULT 0,
        request_id TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX usage_ts ON usage(ts);
    CREATE INDEX usage_account_ts ON usage(account_id, ts);
    CREATE INDEX usage_dna_ts ON usage(dna, ts);

    CREATE TABLE op_logs (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        operator_id INTEGER NOT NULL,
        target_id INTEGER NOT NULL DEFAULT 0,
        action TEXT NOT NULL,
        details TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT 'success'
    );
    CREATE INDEX op_logs_operator ON op_logs(operator_id, id);
    CREATE INDEX op_logs_target ON op_logs(target_id, id);

    CREATE TABLE news (
        id INTEGER PRIMARY KEY,
        author_id INTEGER NOT NULL,
        target_id INTEGER,          -- NULL with target_dna NULL = system news
        target_dna TEXT,
        title TEXT NOT NULL,
        content TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL
    );

    CREATE TABLE idempotency (
        account_id INTEGER NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        status INTEGER NOT NULL,
        response BLOB NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (account_id, key)
    );

    -- Email alerts already sent, so each goes out once per period.
    CREATE TABLE alerts_sent (
        account_id INTEGER NOT NULL,
        kind TEXT NOT NULL,
        period TEXT NOT NULL,
        sent_at REAL NOT NULL,
        PRIMARY KEY (account_id, kind, period)
    );
    """,
]

# 2: a daily rollup of usage kept by a trigger, so reports read thousands of rows
# instead of millions and can never drift from the raw records.
MIGRATIONS.append(
    """
    CREATE TABLE usage_daily (
        day INTEGER NOT NULL,            -- UTC day number: ts / 86400
        account_id INTEGER NOT NULL,
        model TEXT NOT NULL,
        dna TEXT NOT NULL,
        requests INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        cost_n INTEGER NOT NULL,
        PRIMARY KEY (day, account_id, model)
    ) WITHOUT ROWID;
    CREATE INDEX usage_daily_dna ON usage_daily(dna, day);
    CREATE INDEX usage_daily_account ON usage_daily(account_id, day);

    INSERT INTO usage_daily
    SELECT CAST(ts / 86400 AS INTEGER), account_id, model, MAX(dna), COUNT(*),
           SUM(prompt_tokens), SUM(completion_tokens), SUM(cached_tokens), SUM(cost_n)
    FROM usage GROUP BY 1, 2, 3;

    CREATE TRIGGER usage_rollup AFTER INSERT ON usage BEGIN
        INSERT INTO usage_daily VALUES (
            CAST(NEW.ts / 86400 AS INTEGER), NEW.account_id, NEW.model, NEW.dna, 1,
            NEW.prompt_tokens, NEW.completion_tokens, NEW.cached_tokens, NEW.cost_n)
        ON CONFLICT (day, account_id, model) DO UPDATE SET
            requests = requests + 1,
            prompt_tokens = prompt_tokens + excluded.prompt_tokens,
            completion_tokens = completion_tokens + excluded.completion_tokens,
            cached_tokens = cached_tokens + excluded.cached_tokens,
            cost_n = cost_n + excluded.cost_n,
            dna = excluded.dna;
    END;
    """
)

# 3: reports read usage_daily now; two indexes on the raw rows only slowed each insert.
MIGRATIONS.append(
    """
    DROP INDEX IF EXISTS usage_ts;
    DROP INDEX IF EXISTS usage_dna_ts;
    """
)

# 4: a provider key's vendor (SPEC 13); '' = inferred from its Provider host at load.
MIGRATIONS.append(
    """
    ALTER TABLE provider_keys ADD COLUMN type TEXT NOT NULL DEFAULT '';
    """
)

# 5: the writer folds each batch's usage into usage_daily itself (one upsert per day,
# account and model), cheaper than this trigger's upsert per row.
MIGRATIONS.append(
    """
    DROP TRIGGER IF EXISTS usage_rollup;
    """
)

# 6: Suspended (SPEC 3): an ancestor stops one account, not its subtree.
MIGRATIONS.append(
    """
    ALTER TABLE accounts ADD COLUMN suspended INTEGER NOT NULL DEFAULT 0;
    """
)

# 7: AllowLevels (SPEC 3): the routing levels an account's requests may use; '' = all.
MIGRATIONS.append(
    """
    ALTER TABLE accounts ADD COLUMN allow_levels TEXT NOT NULL DEFAULT '';
    """
)

# 8: AutoQuota (SPEC 3): limits follow the credit granted until set explicitly. Accounts
# whose limits are not the derived 10 x / 8 x CreditGranted were set by hand: off.
MIGRATIONS.append(
    """
    ALTER TABLE accounts ADD COLUMN auto_quota INTEGER NOT NULL DEFAULT 1;
    UPDATE accounts SET auto_quota = 0
    WHERE abs(hard_limit - 10 * credit_granted) > 1e-6
       OR abs(soft_limit - 8 * credit_granted) > 1e-6;
    """
)

# 9: an account's own ModelMapper and LevelMapper (SPEC 3), JSON objects like the
# owner's MODEL_MAPPER / LEVEL_MAPPER.
MIGRATIONS.append(
    """
    ALTER TABLE accounts ADD COLUMN model_mapper TEXT NOT NULL DEFAULT '{}';
    ALTER TABLE accounts ADD COLUMN level_mapper TEXT NOT NULL DEFAULT '{}';
    """
)

# 10: MODEL_FAILOVER (SPEC 6): the usage record says the failover model served it.
MIGRATIONS.append(
    """
    ALTER TABLE usage ADD COLUMN failover INTEGER NOT NULL DEFAULT 0;
    """
)

# 11: who made each stateful provider object (files, batches, ...) created through the
# gateway, so only that account and its ancestors reach it (xaiproxy/objects.py).
MIGRATIONS.append(
    """
    CREATE TABLE objects (
        owner_id INTEGER NOT NULL,
        object_id TEXT NOT NULL,
        account_id INTEGER NOT NULL,
        dna TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (owner_id, object_id)
    ) WITHOUT ROWID;
    """
)

# 12: small facts about the database itself (the secret box's scrypt salt).
MIGRATIONS.append(
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """
)
