package cryptopipe.flink;

import java.math.BigDecimal;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.functions.ScalarFunction;

/** (high - low) / open in %, to 8 decimals. */
public class RangePct extends ScalarFunction {
    public @DataTypeHint("DECIMAL(38, 8)") BigDecimal eval(
            @DataTypeHint("DECIMAL(18, 8)") BigDecimal high, @DataTypeHint("DECIMAL(18, 8)") BigDecimal low,
            @DataTypeHint("DECIMAL(18, 8)") BigDecimal open) {
        if (high == null || low == null || open == null || open.signum() == 0) {
            return null;
        }
        return Exact.scale8(high.subtract(low).divide(open, Exact.PY).multiply(Exact.HUNDRED, Exact.PY));
    }
}
