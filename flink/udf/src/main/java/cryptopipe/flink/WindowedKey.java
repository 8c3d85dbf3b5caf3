package cryptopipe.flink;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import org.apache.flink.table.functions.ScalarFunction;

/**
 * The Kafka key of a 1-minute candle as ksqlDB writes a windowed table's key: the symbol's bytes followed by the
 * window start in epoch ms as 8 big-endian bytes (cryptopipe.schemas.check_candle accepts it). One key per candle is
 * what an upsert sink needs; the symbol alone would make every minute of a symbol one row.
 */
public class WindowedKey extends ScalarFunction {
    public byte[] eval(String symbol, Long windowStart) {
        if (symbol == null || windowStart == null) {
            return null;
        }
        byte[] name = symbol.getBytes(StandardCharsets.UTF_8);
        return ByteBuffer.allocate(name.length + 8).put(name).putLong(windowStart).array();
    }
}
