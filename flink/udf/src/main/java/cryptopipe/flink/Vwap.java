package cryptopipe.flink;

import java.math.BigDecimal;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.ScalarFunction;

/** Volume-weighted average price: quote volume / volume, to 8 decimals. */
public class Vwap extends ScalarFunction {
    public @DataTypeHint("DECIMAL(18, 8)") BigDecimal eval(
            @DataTypeHint("DECIMAL(38, 16)") BigDecimal quote, @DataTypeHint("DECIMAL(38, 8)") BigDecimal volume,
            @DataTypeHint("DECIMAL(18, 8)") BigDecimal close) {
        if (quote == null || volume == null) {
            return null;
        }
        return Exact.scale8(volume.signum() == 0 ? close : quote.divide(volume, Exact.PY));
    }
}
