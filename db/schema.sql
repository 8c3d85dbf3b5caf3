-- The pipeline's tables, owned by the owner role. Re-runnable. Primary keys are the natural keys
-- from DESIGN.md, so the JDBC sink's upserts are idempotent.

CREATE TABLE IF NOT EXISTS trades (
    symbol          text        NOT NULL,
    agg_id          bigint      NOT NULL,
    price           numeric     NOT NULL CHECK (price > 0),
    qty             numeric     NOT NULL CHECK (qty >= 0),
    first_trade_id  bigint      NOT NULL,
    last_trade_id   bigint      NOT NULL,
    trade_time      timestamptz NOT NULL,
    is_buyer_maker  boolean     NOT NULL,
    PRIMARY KEY (symbol, agg_id)
);
CREATE INDEX IF NOT EXISTS trades_time_idx ON trades (trade_time);
CREATE INDEX IF NOT EXISTS trades_symbol_time_idx ON trades (symbol, trade_time);

CREATE TABLE IF NOT EXISTS candles_1m (
    symbol        text        NOT NULL,
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    open          numeric     NOT NULL,
    high          numeric     NOT NULL,
    low           numeric     NOT NULL,
    close         numeric     NOT NULL,
    volume        numeric     NOT NULL,
    quote_volume  numeric     NOT NULL,
    trade_count   bigint      NOT NULL,
    vwap          numeric,
    PRIMARY KEY (symbol, window_start)
);
CREATE INDEX IF NOT EXISTS candles_1m_time_idx ON candles_1m (window_start);

CREATE TABLE IF NOT EXISTS stats_5m (
    symbol          text        NOT NULL,
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    open            numeric     NOT NULL,
    high            numeric     NOT NULL,
    low             numeric     NOT NULL,
    close           numeric     NOT NULL,
    volume          numeric     NOT NULL,
    trade_count     bigint      NOT NULL,
    range_pct       numeric     NOT NULL,
    volatility_pct  numeric     NOT NULL,
    PRIMARY KEY (symbol, window_start)
);
CREATE INDEX IF NOT EXISTS stats_5m_time_idx ON stats_5m (window_start);

CREATE TABLE IF NOT EXISTS alerts (
    alert_id      text        PRIMARY KEY,
    symbol        text        NOT NULL,
    rule          text        NOT NULL,
    window_start  timestamptz NOT NULL,
    value         numeric     NOT NULL,
    threshold     numeric     NOT NULL,
    price         numeric,
    detected_at   timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_symbol_time_idx ON alerts (symbol, window_start);
CREATE INDEX IF NOT EXISTS alerts_time_idx ON alerts (window_start);

-- Data-quality results written by the data_quality_check DAG, one row per check and interval.
CREATE TABLE IF NOT EXISTS quality_results (
    check_name    text        NOT NULL,
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    passed        boolean     NOT NULL,
    detail        text,
    run_id        text,
    checked_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (check_name, window_start, window_end)
);

-- Rollups of candles_1m written by the crypto_batch_processing DAG (same columns as candles_1m).
CREATE TABLE IF NOT EXISTS candles_1h (LIKE candles_1m INCLUDING ALL);
CREATE TABLE IF NOT EXISTS candles_1d (LIKE candles_1m INCLUDING ALL);

-- Per-symbol indicators on 1-minute closes, written by the crypto_analysis DAG.
CREATE TABLE IF NOT EXISTS indicators_1m (
    symbol          text        NOT NULL,
    window_start    timestamptz NOT NULL,
    close           numeric     NOT NULL,
    sma_20          numeric,
    ema_20          numeric,
    rsi_14          numeric,
    volatility_60   numeric,
    PRIMARY KEY (symbol, window_start)
);

-- One row per HTML report written by the crypto_reports DAG. The id comes from the period and the window's
-- start ('<period>:<YYYYmmddTHHMM>' in UTC), so a re-run of the same report updates its row.
CREATE TABLE IF NOT EXISTS reports (
    report_id     text        PRIMARY KEY,
    period        text        NOT NULL CHECK (period IN ('hourly', 'daily')),
    window_start  timestamptz NOT NULL,
    window_end    timestamptz NOT NULL,
    symbols       text[]      NOT NULL,
    path          text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    run_id        text
);
CREATE INDEX IF NOT EXISTS reports_time_idx ON reports (window_start);
