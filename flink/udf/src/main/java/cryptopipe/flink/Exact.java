package cryptopipe.flink;

import java.math.BigDecimal;
import java.math.MathContext;
import java.math.RoundingMode;

/**
 * Decimal arithmetic as Python's decimal module does it by default (28 significant digits, half-even), which is
 * how the contract's other engine and the tests compute these figures. Flink SQL's decimal division keeps as few
 * as 6 decimals and its casts round half-up, so these few ratios are computed here.
 */
final class Exact {
    static final MathContext PY = new MathContext(28, RoundingMode.HALF_EVEN);
    static final BigDecimal HUNDRED = BigDecimal.valueOf(100);

    private Exact() {
    }

    static BigDecimal scale8(BigDecimal value) {
        return value.setScale(8, RoundingMode.HALF_EVEN);
    }
}
