// A Java program as a user would run one: the JVM's own threads (GC,
// JIT compilers, signal dispatcher), two worker threads of ours that
// compute, a heap that churns every tick. Each tick it checks a table it
// built at start and, every 20 ticks, that both workers made progress,
// then appends `tick N ok` (or `FAIL ...`) to ./progress.log.
import java.io.FileWriter;
import java.io.PrintWriter;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.atomic.AtomicLongArray;

public class JavaTick {
    public static void main(String[] args) throws Exception {
        PrintWriter log = new PrintWriter(new FileWriter("progress.log", true), true);
        long[] table = new long[1 << 20];
        for (int i = 0; i < table.length; i++) table[i] = (long) i * 2654435761L;
        AtomicLongArray counts = new AtomicLongArray(2);
        for (int w = 0; w < 2; w++) {
            final int me = w;
            Thread t = new Thread(() -> {
                long x = me;
                while (true) {
                    for (int i = 0; i < 200000; i++) x = x * 6364136223846793005L + 1442695040888963407L;
                    counts.addAndGet(me, 1 + (x & 1));
                }
            });
            t.setDaemon(true);
            t.start();
        }
        List<byte[]> churn = new ArrayList<>();
        long[] last = new long[2];
        for (int n = 1; ; n++) {
            churn.add(new byte[65536 + n % 4096]);
            if (churn.size() > 64) churn.remove(0);
            Thread.sleep(100);
            String msg = "ok";
            for (int i = 0; i < table.length; i += 4099) {
                if (table[i] != (long) i * 2654435761L) { msg = "FAIL table[" + i + "]"; break; }
            }
            // both workers progressed over the last 20 ticks (not per tick:
            // the first tick after a restore may come before either ran)
            for (int w = 0; w < 2 && n % 20 == 0; w++) {
                long c = counts.get(w);
                if (n > 20 && c == last[w] && msg.equals("ok")) msg = "FAIL worker " + w + " made no progress";
                last[w] = c;
            }
            log.println(msg.equals("ok") ? "tick " + n + " ok" : msg + " (tick " + n + ")");
        }
    }
}
