package cryptopipe.flink;

import java.math.BigDecimal;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * Price dispersion in %: the population standard deviation over the mean, from the window's count, sum of prices
 * and sum of squared prices (SUM over exact decimals in SQL), to 8 decimals.
 */
public class VolatilityPct extends ScalarFunction {
    public @DataTypeHint("DECIMAL(38, 8)") BigDecimal eval(
            Long count, @DataTypeHint("DECIMAL(38, 8)") BigDecimal sumPrice,
            @DataTypeHint("DECIMAL(38, 16)") BigDecimal sumSquares) {
        if (count == null || count == 0 || sumPrice == null || sumSquares == null || sumPrice.signum() == 0) {
            return null;
        }
        BigDecimal n = BigDecimal.valueOf(count);
        BigDecimal mean = sumPrice.divide(n, Exact.PY);
        BigDecimal variance = sumSquares.divide(n, Exact.PY).subtract(mean.multiply(mean, Exact.PY), Exact.PY);
        if (variance.signum() < 0) {
            variance = BigDecimal.ZERO;
        }
        return Exact.scale8(variance.sqrt(Exact.PY).divide(mean, Exact.PY).multiply(Exact.HUNDRED, Exact.PY));
    }
}
