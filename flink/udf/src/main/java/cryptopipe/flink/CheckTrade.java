package cryptopipe.flink;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonFactoryBuilder;
import com.fasterxml.jackson.core.JsonParseException;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.core.StreamReadConstraints;
import com.fasterxml.jackson.core.json.JsonReadFeature;
import java.io.IOException;
import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.math.BigDecimal;
import java.math.BigInteger;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;
import java.util.Arrays;
import java.util.Objects;
import java.util.regex.Pattern;
import org.apache.flink.table.annotation.DataTypeHint;
import org.apache.flink.table.annotation.FunctionHint;
import org.apache.flink.table.functions.TableFunction;
import org.apache.flink.types.Row;

/**
 * The validation contract of a binance.aggtrades record, as cryptopipe/schemas.py check_trade states it, in the same
 * order and with the same reasons (but for the wording of JSON syntax errors, and a list or object in a field shown as
 * "<object or list>"): one row per record, with the trade's fields, or with only `error` set. Total: for any bytes it
 * answers a row, never an exception, and it refuses exactly the values Python's check refuses
 * (tests/test_contract_property.py holds the two to that).
 *
 * <p>A table function rather than a scalar one returning a ROW: the planner may call a scalar function once per
 * field read from its result; a lateral table is evaluated once per record and INSERT. (Not once per record: the
 * job's five INSERTs do not share the lateral join, each expands the view with its own correlation id, so a record
 * is parsed five times. Measured: parsing once less often changed the job's rate by ~4%; the windows cost more.)
 */
@FunctionHint(output = @DataTypeHint(
        "ROW<symbol STRING, agg_id BIGINT, price DECIMAL(18, 8), qty DECIMAL(18, 8), error STRING>"))
public class CheckTrade extends TableFunction<Row> {

    static final Pattern SYMBOL = Pattern.compile("[A-Z0-9]{2,20}");
    static final long MIN_TIME_MS = 1_262_304_000_000L; // 2010-01-01T00:00:00Z
    static final long MAX_TIME_MS = 4_102_444_800_000L; // 2100-01-01T00:00:00Z
    static final int MAX_DEPTH = 100;
    static final int MAX_INT_DIGITS = 4300; // CPython's sys.get_int_max_str_digits()
    // The exponent range of Python's Decimal (libmpdec's MAX_EMAX, and its etiny: MIN_EMIN - MAX_PREC + 1).
    static final BigInteger MAX_ADJUSTED_EXPONENT = BigInteger.valueOf(999_999_999_999_999_999L);
    static final BigInteger MIN_EXPONENT = BigInteger.valueOf(-1_999_999_999_999_999_997L);
    static final DateTimeFormatter UTC = DateTimeFormatter.ofPattern("uuuu-MM-dd'T'HH:mm:ss'Z'")
            .withZone(ZoneOffset.UTC);

    // Python's json reads numbers and strings of any length (ints up to MAX_INT_DIGITS, checked here): Jackson's
    // default limits would refuse what Python accepts. Depth is bounded before parsing, as in Python. NaN and
    // Infinity are let through Jackson only to be refused with Python's reason. No charset detection: Python reads
    // UTF-8 only, Jackson would read UTF-16 and UTF-32 and skip a BOM. A shared symbol table that fails on
    // colliding names would refuse a valid record; interning attacker's names would only fill the JVM's table.
    private static final JsonFactory JSON = new JsonFactoryBuilder()
            .streamReadConstraints(StreamReadConstraints.builder().maxNestingDepth(MAX_DEPTH)
                    .maxNumberLength(Integer.MAX_VALUE).maxStringLength(Integer.MAX_VALUE)
                    .maxNameLength(Integer.MAX_VALUE).build())
            .enable(JsonReadFeature.ALLOW_NON_NUMERIC_NUMBERS)
            .disable(JsonFactory.Feature.CHARSET_DETECTION)
            .disable(JsonFactory.Feature.FAIL_ON_SYMBOL_HASH_OVERFLOW)
            .disable(JsonFactory.Feature.INTERN_FIELD_NAMES)
            .build();
    private static final Object NOT_A_SCALAR = new Object();
    private static final VarHandle LONGS = MethodHandles.byteArrayViewVarHandle(long[].class, ByteOrder.LITTLE_ENDIAN);

    /** Thrown with the reason a record breaks the contract. */
    static final class Invalid extends Exception {
        Invalid(String reason) {
            super(reason, null, false, false);
        }
    }

    /** A JSON number as written: its value is only computed for the contract's fields, and only once valid. */
    record Num(String text, boolean integral) {
    }

    /**
     * @param timestamp the record's Kafka timestamp (null: none)
     * @param maxSkewMs MAX_CLOCK_SKEW_S in milliseconds
     */
    public void eval(byte[] key, byte[] value, @DataTypeHint("TIMESTAMP_LTZ(3)") Instant timestamp, Long maxSkewMs) {
        Objects.requireNonNull(maxSkewMs, "check_trade needs the clock-skew bound (a BIGINT, not NULL)");
        Long timestampMs = timestamp == null ? null : timestamp.toEpochMilli();
        try {
            collect(check(key, value, timestampMs, maxSkewMs, System.currentTimeMillis()));
        } catch (Invalid err) {
            collect(Row.of(null, null, null, null, err.getMessage()));
        }
    }

    static Row check(byte[] key, byte[] value, Long timestampMs, long maxSkewMs, long nowMs) throws Invalid {
        Object[] fields = decode(value);
        String symbol = symbol(fields[0]);
        long aggId = integer("agg_id", fields[1], 0, Long.MAX_VALUE);
        BigDecimal price = decimal("price", fields[2]);
        BigDecimal qty = decimal("qty", fields[3]);
        long first = integer("first_trade_id", fields[4], 0, Long.MAX_VALUE);
        long last = integer("last_trade_id", fields[5], 0, Long.MAX_VALUE);
        long tradeTime = integer("trade_time", fields[6], MIN_TIME_MS, MAX_TIME_MS);
        if (!(fields[7] instanceof Boolean)) {
            throw new Invalid("is_buyer_maker " + show(fields[7], 20) + " is not a boolean");
        }
        if (last < first) {
            throw new Invalid("last_trade_id is before first_trade_id");
        }
        byte[] expected = symbol.getBytes(StandardCharsets.UTF_8);
        if (key == null || !Arrays.equals(key, expected)) {
            throw new Invalid("key " + showKey(key) + " is not the symbol '" + symbol + "'");
        }
        notAhead("trade_time", tradeTime, maxSkewMs, nowMs);
        if (timestampMs != null) {
            notAhead("Kafka timestamp", timestampMs, maxSkewMs, nowMs);
        }
        return Row.of(symbol, aggId, price, qty, null);
    }

    /** Python's check_not_ahead: refused when more than maxSkewMs ahead of now, naming both times. */
    static void notAhead(String name, long ms, long maxSkewMs, long now) throws Invalid {
        long ahead = ms - now;
        if (((ms ^ now) & (ms ^ ahead)) >= 0 && ahead <= maxSkewMs) {
            return; // the usual case; past the ends of a long (a test may send any timestamp) exactly, as Python does
        }
        BigInteger exact = BigInteger.valueOf(ms).subtract(BigInteger.valueOf(now));
        if (exact.compareTo(BigInteger.valueOf(maxSkewMs)) > 0) {
            throw new Invalid(name + " " + ms + " (" + utcText(ms) + ") is " + floorDiv(exact, BigInteger.valueOf(1000))
                    + " s ahead of the wall clock " + now + " (" + utcText(now) + "); at most MAX_CLOCK_SKEW_S="
                    + Math.floorDiv(maxSkewMs, 1000) + " s is accepted");
        }
    }

    static BigInteger floorDiv(BigInteger a, BigInteger b) {
        BigInteger[] qr = a.divideAndRemainder(b);
        return qr[1].signum() < 0 ? qr[0].subtract(BigInteger.ONE) : qr[0];
    }

    static String utcText(long ms) {
        if (ms < MIN_TIME_MS || ms > MAX_TIME_MS) {
            return "out of range";
        }
        return UTC.format(Instant.ofEpochSecond(Math.floorDiv(ms, 1000)));
    }

    static final String[] NAMES = {"symbol", "agg_id", "price", "qty", "first_trade_id", "last_trade_id",
        "trade_time", "is_buyer_maker"};

    /** The contract's fields of a JSON object (a repeated field: the last one, as Python's json reads it). */
    static Object[] decode(byte[] value) throws Invalid {
        if (value == null) {
            throw new Invalid("tombstone: no value");
        }
        // The same order of refusals as Python's decode: depth before anything, then UTF-8, then JSON. One pass
        // checks the UTF-8 and counts the brackets; only a value of many brackets is measured.
        int brackets = utf8Brackets(value);
        boolean utf8 = brackets >= 0;
        brackets = utf8 ? brackets : brackets(value);
        if (brackets > MAX_DEPTH && depth(value) > MAX_DEPTH) {
            throw new Invalid("not JSON: nested deeper than " + MAX_DEPTH + " levels");
        }
        if (!utf8) {
            throw new Invalid("value is not UTF-8");
        }
        if (value.length >= 3 && (value[0] & 0xff) == 0xef && (value[1] & 0xff) == 0xbb && (value[2] & 0xff) == 0xbf) {
            throw new Invalid("not JSON: Expecting value: line 1 column 1 (char 0)"); // Python reads the BOM as a char
        }
        try {
            try (JsonParser p = JSON.createParser(value)) {
                return fields(p);
            } catch (JsonParseException err) {
                // Jackson's byte parser refuses a lone surrogate escaped in a field name; Python takes it,
                // and so does Jackson's char parser, slower, used for these only.
                if (!String.valueOf(err.getMessage()).contains("surrogate")) {
                    throw err;
                }
            }
            try (JsonParser p = JSON.createParser(new String(value, StandardCharsets.UTF_8))) {
                return fields(p);
            }
        } catch (Invalid err) {
            throw err;
        } catch (Exception err) { // Jackson's parse errors
            String message = String.valueOf(err.getMessage()).split("\n")[0];
            throw new Invalid("not JSON: " + clip(message, 200));
        }
    }

    /** The contract's fields, read in one flat pass over every token: a number nested anywhere is checked too. */
    static Object[] fields(JsonParser p) throws Invalid, IOException {
        Object[] out = new Object[NAMES.length];
        JsonToken first = p.nextToken();
        if (first == null) {
            throw new Invalid("not JSON: empty value");
        }
        int depth = 0;
        int index = -1;
        JsonToken t = first;
        do {
            switch (t) {
                case START_OBJECT, START_ARRAY -> {
                    if (depth == 1 && index >= 0) {
                        out[index] = NOT_A_SCALAR;
                    }
                    depth++;
                }
                case END_OBJECT, END_ARRAY -> depth--;
                case FIELD_NAME -> {
                    if (depth == 1) {
                        index = indexOf(p.currentName());
                    }
                }
                case VALUE_NUMBER_INT -> {
                    int digits = p.getTextLength() - (p.getTextCharacters()[p.getTextOffset()] == '-' ? 1 : 0);
                    if (digits > MAX_INT_DIGITS) {
                        throw new Invalid("not JSON: Exceeds the limit (" + MAX_INT_DIGITS + " digits) for integer"
                                + " string conversion: value has " + digits + " digits; use"
                                + " sys.set_int_max_str_digits() to increase the limit");
                    }
                    if (depth == 1 && index >= 0) {
                        out[index] = new Num(p.getText(), true);
                    }
                }
                case VALUE_NUMBER_FLOAT -> {
                    if (p.isNaN()) { // NaN, Infinity, -Infinity (and Jackson's other spellings)
                        throw new Invalid("not JSON: " + p.getText() + " is not a JSON value");
                    }
                    if (!inDecimalRange(p.getTextCharacters(), p.getTextOffset(), p.getTextLength())) {
                        throw new Invalid("not JSON: " + clip(p.getText(), 40) + " is beyond Decimal's exponents");
                    }
                    if (depth == 1 && index >= 0) {
                        out[index] = new Num(p.getText(), false);
                    }
                }
                case VALUE_STRING -> {
                    if (depth == 1 && index >= 0) {
                        out[index] = p.getText();
                    }
                }
                case VALUE_TRUE, VALUE_FALSE, VALUE_NULL -> {
                    if (depth == 1 && index >= 0) {
                        out[index] = t == JsonToken.VALUE_NULL ? null : t == JsonToken.VALUE_TRUE;
                    }
                }
                default -> {
                }
            }
        } while (depth > 0 && (t = p.nextToken()) != null);
        if (p.nextToken() != null) {
            throw new Invalid("not JSON: extra data after the value");
        }
        if (first != JsonToken.START_OBJECT) {
            throw new Invalid("not a JSON object but " + switch (first) {
                case START_ARRAY -> "list";
                case VALUE_STRING -> "str";
                case VALUE_NUMBER_INT -> "int";
                case VALUE_NUMBER_FLOAT -> "Decimal";
                case VALUE_NULL -> "NoneType";
                default -> "bool";
            });
        }
        return out;
    }

    static int indexOf(String name) {
        for (int i = 0; i < NAMES.length; i++) {
            if (NAMES[i].equals(name)) {
                return i;
            }
        }
        return -1;
    }

    static int brackets(byte[] value) {
        int n = 0;
        for (byte b : value) {
            if (b == '[' || b == '{') {
                n++;
            }
        }
        return n;
    }

    /**
     * How deep brackets nest outside strings, exactly as schemas.depth counts them: a string runs from a quote to the
     * next unescaped quote (a backslash escapes any byte), or to the end of the value when none comes.
     */
    static int depth(byte[] v) {
        int deepest = 0;
        int level = 0;
        int i = 0;
        while (i < v.length) {
            byte b = v[i];
            if (b == '"') {
                int j = i + 1;
                while (j < v.length && v[j] != '"') {
                    j += v[j] == '\\' ? 2 : 1;
                }
                i = j + 1;
                continue;
            }
            if (b == '[' || b == '{') {
                deepest = Math.max(deepest, ++level);
            } else if (b == ']' || b == '}') {
                level--;
            }
            i++;
        }
        return deepest;
    }

    /**
     * How many '[' and '{' a value holds, or -1 when it is not strict UTF-8 as Python's bytes.decode reads it: no
     * overlong forms, no surrogates, nothing above U+10FFFF.
     */
    static int utf8Brackets(byte[] v) {
        int brackets = 0;
        int i = 0;
        int n = v.length;
        while (i < n) {
            if (i + 8 <= n) { // eight ASCII bytes at a time, the usual case: '[' and '{' are the bytes b | 0x20 == '{'
                long w = (long) LONGS.get(v, i);
                if ((w & 0x8080808080808080L) == 0) {
                    long x = (w | 0x2020202020202020L) ^ 0x7b7b7b7b7b7b7b7bL;
                    brackets += Long.bitCount(~(((x & 0x7f7f7f7f7f7f7f7fL) + 0x7f7f7f7f7f7f7f7fL) | x
                            | 0x7f7f7f7f7f7f7f7fL)); // 0x80 in each byte of x that is zero
                    i += 8;
                    continue;
                }
            }
            int b = v[i];
            if (b >= 0) {
                if (b == '[' || b == '{') {
                    brackets++;
                }
                i++;
                continue;
            }
            b &= 0xff;
            if (b < 0xc2 || b > 0xf4) {
                return -1;
            }
            int size = b < 0xe0 ? 2 : b < 0xf0 ? 3 : 4;
            if (i + size > n) {
                return -1;
            }
            int b1 = v[i + 1] & 0xff;
            int low = b == 0xe0 ? 0xa0 : b == 0xf0 ? 0x90 : 0x80;
            int high = b == 0xed ? 0x9f : b == 0xf4 ? 0x8f : 0xbf;
            if (b1 < low || b1 > high) {
                return -1;
            }
            for (int k = 2; k < size; k++) {
                if ((v[i + k] & 0xc0) != 0x80) {
                    return -1;
                }
            }
            i += size;
        }
        return brackets;
    }

    /**
     * Whether Python's Decimal takes this JSON number as written (it refuses an adjusted exponent above 10^18 - 1 or
     * an exponent below its etiny, and json lets that error out). Only an exponent of 16 digits or more can.
     */
    static boolean inDecimalRange(char[] text, int offset, int length) {
        int end = offset + length;
        int e = end;
        while (e > offset && text[e - 1] >= '0' && text[e - 1] <= '9') {
            e--;
        }
        int expDigits = e;
        while (expDigits < end - 1 && text[expDigits] == '0') {
            expDigits++;
        }
        if (end - expDigits < 16 || e == offset || text[e - 1] == '.') {
            return true;
        }
        int mark = e - 1; // 'e' or a sign
        BigInteger exponent = new BigInteger(new String(text, expDigits, end - expDigits));
        if (text[mark] == '-' || text[mark] == '+') {
            exponent = text[mark] == '-' ? exponent.negate() : exponent;
            mark--;
        }
        Digits d = Digits.of(new String(text, offset, mark - offset));
        BigInteger exp = exponent.subtract(BigInteger.valueOf(d.fraction));
        BigInteger adjusted = exp.add(BigInteger.valueOf(d.coefficient.length() - 1));
        return adjusted.compareTo(MAX_ADJUSTED_EXPONENT) <= 0 && exp.compareTo(MIN_EXPONENT) >= 0;
    }

    /** A number's sign, coefficient without leading zeros ("0" for zero) and count of decimals, as Decimal keeps. */
    record Digits(boolean negative, String coefficient, long fraction) {
        static Digits of(String mantissa) {
            boolean negative = mantissa.startsWith("-");
            String m = negative ? mantissa.substring(1) : mantissa;
            int point = m.indexOf('.');
            String all = point < 0 ? m : m.substring(0, point) + m.substring(point + 1);
            int lead = 0;
            while (lead < all.length() - 1 && all.charAt(lead) == '0') {
                lead++;
            }
            return new Digits(negative, all.substring(lead), point < 0 ? 0 : m.length() - point - 1);
        }
    }

    static String symbol(Object raw) throws Invalid {
        if (!(raw instanceof String s) || !SYMBOL.matcher(s).matches()) {
            throw new Invalid("symbol " + show(raw, 40) + " is not 2-20 upper-case letters and digits");
        }
        return (String) raw;
    }

    static long integer(String name, Object raw, long low, long high) throws Invalid {
        if (!(raw instanceof Num num) || !num.integral()) {
            throw new Invalid(name + " " + show(raw, 60) + " is not an integer");
        }
        String text = num.text();
        if (text.length() <= 18) { // fits a long: the usual case, without a BigInteger
            long n = Long.parseLong(text);
            if (n < low || n > high) {
                throw new Invalid(name + " " + n + " is outside " + low + ".." + high);
            }
            return n;
        }
        BigInteger n = new BigInteger(text); // at most MAX_INT_DIGITS digits
        if (n.compareTo(BigInteger.valueOf(low)) < 0 || n.compareTo(BigInteger.valueOf(high)) > 0) {
            throw new Invalid(name + " " + n + " is outside " + low + ".." + high);
        }
        return n.longValueExact();
    }

    /**
     * A positive decimal of at most 10 digits before the point and 8 after (DECIMAL(18, 8)), judged on the digits
     * and exponent Python's Decimal keeps, read from the text: 1e999999999 or a million trailing zeros must reach no
     * arithmetic.
     */
    static BigDecimal decimal(String name, Object raw) throws Invalid {
        if (!(raw instanceof Num num)) {
            throw new Invalid(name + " " + show(raw, 60) + " is not a JSON number");
        }
        String t = num.text();
        int end = t.length();
        int e = num.integral() ? end : Math.max(t.indexOf('e'), t.indexOf('E'));
        e = e < 0 ? end : e;
        int point = t.indexOf('.');
        point = point < 0 || point > e ? e : point;
        // The exponent is in Decimal's range (checked when read), so it and the digit counts fit a long.
        long exponent = (e < end ? Long.parseLong(t, e + 1, end, 10) : 0) - Math.max(0, e - point - 1);
        int first = t.charAt(0) == '-' ? 1 : 0;
        while (first < e && (t.charAt(first) == '0' || t.charAt(first) == '.')) {
            first++; // leading zeros: Decimal drops them
        }
        int last = e - 1;
        while (last >= first && (t.charAt(last) == '0' || t.charAt(last) == '.')) {
            last--;
        }
        boolean zero = first >= e;
        // len(digits) of Decimal's tuple (trailing zeros included), and how many of them are trailing zeros.
        long digits = e - first - (first < point && point < e ? 1 : 0);
        long trailing = e - 1 - last - (last < point && point < e ? 1 : 0);
        if (!zero && digits + exponent > 10) {
            throw new Invalid(name + " " + pyNumber(num) + " has more than 10 digits before the point");
        }
        if (!zero && exponent + trailing < -8) {
            throw new Invalid(name + " " + pyNumber(num) + " has more than 8 decimals");
        }
        if (zero || t.charAt(0) == '-') {
            throw new Invalid(name + " " + pyNumber(num) + " is not positive");
        }
        long unscaled = 0; // at most 18 significant digits by now
        for (int i = first; i <= last; i++) {
            if (i != point) {
                unscaled = unscaled * 10 + (t.charAt(i) - '0');
            }
        }
        return BigDecimal.valueOf(unscaled, (int) -(exponent + trailing)).setScale(8);
    }

    /** A number as Python's reasons print it: str() of the int or the Decimal, 40 characters at most. */
    static String pyNumber(Num num) {
        return clip(num.integral() ? new BigInteger(num.text()).toString() : pyDecimal(num.text()), 40);
    }

    /** str() of Python's Decimal of a JSON number: the General Decimal Arithmetic's to-scientific-string. */
    static String pyDecimal(String json) {
        int e = Math.max(json.indexOf('e'), json.indexOf('E'));
        Digits d = Digits.of(e < 0 ? json : json.substring(0, e));
        BigInteger exp = (e < 0 ? BigInteger.ZERO : new BigInteger(json.substring(e + 1).replace("+", "")))
                .subtract(BigInteger.valueOf(d.fraction));
        String c = d.coefficient;
        BigInteger adjusted = exp.add(BigInteger.valueOf(c.length() - 1));
        StringBuilder out = new StringBuilder(d.negative ? "-" : "");
        if (exp.signum() <= 0 && adjusted.compareTo(BigInteger.valueOf(-6)) >= 0) {
            int point = c.length() + exp.intValueExact(); // digits before the point
            if (exp.signum() == 0) {
                out.append(c);
            } else if (point > 0) {
                out.append(c, 0, point).append('.').append(c, point, c.length());
            } else {
                out.append("0.").append("0".repeat(-point)).append(c);
            }
        } else {
            out.append(c.charAt(0));
            if (c.length() > 1) {
                out.append('.').append(c, 1, c.length());
            }
            out.append('E').append(adjusted.signum() >= 0 ? "+" : "").append(adjusted);
        }
        return out.toString();
    }

    /** Like Python's repr of the value json gives (None, 'text', True, 12, Decimal('1.5')). */
    static String show(Object raw, int width) {
        if (raw == null) {
            return "None";
        } else if (raw == NOT_A_SCALAR) {
            return "<object or list>";
        } else if (raw instanceof String s) {
            return clip(repr(s), width);
        } else if (raw instanceof Boolean b) {
            return b ? "True" : "False";
        }
        Num num = (Num) raw;
        return clip(num.integral() ? new BigInteger(num.text()).toString() : "Decimal('" + pyDecimal(num.text()) + "')",
                width);
    }

    /** Python's repr of a str: its quotes, its escapes, non-printable characters escaped as repr escapes them. */
    static String repr(String s) {
        char quote = s.indexOf('\'') >= 0 && s.indexOf('"') < 0 ? '"' : '\'';
        StringBuilder out = new StringBuilder().append(quote);
        s.codePoints().forEach(c -> {
            if (c == quote || c == '\\') {
                out.append('\\').appendCodePoint(c);
            } else if (c == '\t' || c == '\n' || c == '\r') {
                out.append(c == '\t' ? "\\t" : c == '\n' ? "\\n" : "\\r");
            } else if (c < 0x20 || c == 0x7f) {
                out.append(String.format("\\x%02x", c));
            } else if (c < 0x7f || printable(c)) {
                out.appendCodePoint(c);
            } else {
                out.append(c <= 0xff ? String.format("\\x%02x", c)
                        : c <= 0xffff ? String.format("\\u%04x", c) : String.format("\\U%08x", c));
            }
        });
        return out.append(quote).toString();
    }

    static boolean printable(int c) {
        return switch (Character.getType(c)) {
            case Character.CONTROL, Character.FORMAT, Character.SURROGATE, Character.PRIVATE_USE, Character.UNASSIGNED,
                 Character.LINE_SEPARATOR, Character.PARAGRAPH_SEPARATOR, Character.SPACE_SEPARATOR -> false;
            default -> true;
        };
    }

    /** Python's repr of bytes. */
    static String showKey(byte[] key) {
        if (key == null) {
            return "None";
        }
        String latin = new String(key, StandardCharsets.ISO_8859_1);
        char quote = latin.indexOf('\'') >= 0 && latin.indexOf('"') < 0 ? '"' : '\'';
        StringBuilder out = new StringBuilder("b").append(quote);
        for (byte b : key) {
            int c = b & 0xff;
            if (c == quote || c == '\\') {
                out.append('\\').append((char) c);
            } else if (c == '\t' || c == '\n' || c == '\r') {
                out.append(c == '\t' ? "\\t" : c == '\n' ? "\\n" : "\\r");
            } else if (c < 0x20 || c >= 0x7f) {
                out.append(String.format("\\x%02x", c));
            } else {
                out.append((char) c);
            }
        }
        return clip(out.append(quote).toString(), 60);
    }

    /** The first `width` characters, as Python's format width counts them (code points). */
    static String clip(String text, int width) {
        if (text.length() <= width) {
            return text;
        }
        int count = text.codePointCount(0, text.length());
        return count <= width ? text : text.substring(0, text.offsetByCodePoints(0, width));
    }
}
