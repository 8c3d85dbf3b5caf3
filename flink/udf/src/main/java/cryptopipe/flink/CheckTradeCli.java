package cryptopipe.flink;

import java.io.BufferedReader;
import java.io.BufferedWriter;
import java.io.IOException;
import java.io.InputStreamReader;
import java.io.OutputStreamWriter;
import java.io.Writer;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.util.Base64;
import org.apache.flink.types.Row;

/**
 * For tests only (tests/test_contract_property.py, tests/test_validation.py): {@link CheckTrade#check} on records
 * read from stdin, so that Python's contract and this one can be given the same bytes. The stream job never runs it.
 *
 * <p>One line in: {@code <key base64 or -> <value base64 or -> <Kafka timestamp ms or -> <max skew ms> <now ms>}.
 * One line out: {@code OK <symbol> <agg_id> <price> <qty>}, {@code INVALID <reason>}, or {@code CRASH <exception>}
 * (a broken contract: check must never throw anything but a refusal).
 */
public final class CheckTradeCli {

    private CheckTradeCli() {
    }

    public static void main(String[] args) throws IOException {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.US_ASCII));
        Writer out = new BufferedWriter(new OutputStreamWriter(System.out, StandardCharsets.UTF_8));
        Base64.Decoder base64 = Base64.getDecoder();
        for (String line; (line = in.readLine()) != null; ) {
            String[] f = line.split(" ");
            byte[] key = f[0].equals("-") ? null : base64.decode(f[0]);
            byte[] value = f[1].equals("-") ? null : base64.decode(f[1]);
            Long timestamp = f[2].equals("-") ? null : Long.parseLong(f[2]);
            String answer;
            try {
                Row row = CheckTrade.check(key, value, timestamp, Long.parseLong(f[3]), Long.parseLong(f[4]));
                answer = "OK " + row.getField(0) + " " + row.getField(1) + " "
                        + ((BigDecimal) row.getField(2)).toPlainString() + " "
                        + ((BigDecimal) row.getField(3)).toPlainString();
            } catch (CheckTrade.Invalid err) {
                answer = "INVALID " + err.getMessage();
            } catch (Throwable err) { // StackOverflowError and OutOfMemoryError included: the test reports them
                answer = "CRASH " + err;
            }
            out.write(answer.replace("\r", "\\r").replace("\n", "\\n"));
            out.write('\n');
            out.flush();
        }
    }
}
