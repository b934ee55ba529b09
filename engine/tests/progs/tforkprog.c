/* tfork test program: `tforkprog NTHREADS MIB`.
 * Touches MIB MiB of anonymous memory with a pattern, starts NTHREADS-1
 * extra threads that each count in their own slot, and every 100 ms
 * appends `tick N ok` (or `FAIL why`) to tick-<its own pid>.log in its cwd,
 * so a source and its clones (which share the cwd) log apart. A tick
 * checks a sample of the pattern and, every 5 ticks, that every thread
 * counted. The address of `box` (a page of its own) is written to
 * addr.txt at start: box.poke is read each tick and logged as
 * `poke V` when it changes (the test writes it through /proc/PID/mem);
 * box.ticks counts the ticks. Poke 1000: MADV_DONTNEED of the area's first
 * page, logged as `dontneed <its word 1>`; poke 1001: fork(), the child
 * checks the pattern and logs `child of PPID: ok`, the parent `forked PID: ST`.
 * `tforkprog NTHREADS MIB dontfork`: also a 1 MiB patterned area marked
 * MADV_DONTFORK (as V8 marks its heap), checked every tick; its address
 * is written to dontfork.txt. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct box {
    uint64_t magic, ticks, poke, pad;
    volatile uint64_t counts[64];
} __attribute__((aligned(4096)));
static struct box box = {.magic = 0x7f0f7f0f7f0f7f0full};
static uint64_t *mem;
static size_t words;
static int nthreads;
static uint64_t *dc;
#define DC_WORDS (1u << 17)

static void logline(const char *s) {
    char name[64];
    snprintf(name, sizeof name, "tick-%ld.log", (long)syscall(SYS_getpid));
    FILE *f = fopen(name, "a");
    if (!f) return;
    fputs(s, f);
    fclose(f);
}

static void *worker(void *arg) {
    long i = (long)arg;
    for (;;) {
        box.counts[i]++;
        /* the thread's own tid as glibc caches it must be the kernel's */
        if (syscall(SYS_gettid) != gettid()) {
            logline("FAIL cached tid\n");
        }
        usleep(20000);
    }
    return NULL;
}

int main(int argc, char **argv) {
    nthreads = argc > 1 ? atoi(argv[1]) : 1;
    long mib = argc > 2 ? atol(argv[2]) : 4;
    if (nthreads < 1 || nthreads > 64) return 2;
    words = (size_t)mib * 1024 * 1024 / 8;
    mem = mmap(NULL, words * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) return 3;
    for (size_t i = 0; i < words; i++) mem[i] = i * 0x9e3779b97f4a7c15ull;
    if (argc > 3 && strcmp(argv[3], "dontfork") == 0) {
        dc = mmap(NULL, DC_WORDS * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (dc == MAP_FAILED || madvise(dc, DC_WORDS * 8, MADV_DONTFORK)) return 6;
        for (size_t i = 0; i < DC_WORDS; i++) dc[i] = ~i;
        FILE *d = fopen("dontfork.txt", "w");
        if (!d) return 4;
        fprintf(d, "%p\n", (void *)dc);
        fclose(d);
    }
    FILE *a = fopen("addr.txt", "w");
    if (!a) return 4;
    fprintf(a, "%p\n", (void *)&box);
    fclose(a);
    for (long i = 1; i < nthreads; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, worker, (void *)i)) return 5;
    }
    uint64_t last_poke = box.poke, seen[64] = {0};
    for (;;) {
        char line[128];
        const char *why = NULL;
        for (size_t i = box.ticks % 4096; i < words; i += 4096 + 7)
            if (mem[i] != i * 0x9e3779b97f4a7c15ull) why = "memory pattern";
        if (syscall(SYS_getpid) != getpid()) why = "getpid";
        if (dc)
            for (size_t i = box.ticks % 512; i < DC_WORDS; i += 509)
                if (dc[i] != ~i) why = "MADV_DONTFORK area";
        if (box.ticks % 5 == 4) {
            for (int i = 1; i < nthreads; i++) {
                if (box.counts[i] == seen[i]) why = "a thread stopped counting";
                seen[i] = box.counts[i];
            }
        }
        if (box.poke != last_poke) {
            last_poke = box.poke;
            snprintf(line, sizeof line, "poke %llu\n", (unsigned long long)last_poke);
            logline(line);
            if (last_poke == 1000) {
                /* drop the first page of the area: what does it read then? */
                madvise(mem, 4096, MADV_DONTNEED);
                snprintf(line, sizeof line, "dontneed %llu\n", (unsigned long long)mem[1]);
                logline(line);
                for (size_t i = 0; i < 512 && i < words; i++) mem[i] = i * 0x9e3779b97f4a7c15ull; /* the pattern again */
            }
            if (last_poke == 1001) {
                /* fork inside: the child checks the pattern and logs */
                pid_t c = fork();
                if (c == 0) {
                    int ok = 1;
                    for (size_t i = 0; i < words; i += 4096 + 7)
                        if (mem[i] != i * 0x9e3779b97f4a7c15ull) ok = 0;
                    /* (logged in the child's own tick-PID.log) */
                    snprintf(line, sizeof line, "child of %ld: %s\n", (long)getppid(), ok ? "ok" : "FAIL pattern");
                    logline(line);
                    _exit(ok ? 0 : 1);
                }
                int st = -1;
                waitpid(c, &st, 0);
                snprintf(line, sizeof line, "forked %ld: %d\n", (long)c, st);
                logline(line);
            }
        }
        box.ticks++;
        if (why)
            snprintf(line, sizeof line, "FAIL %s\n", why);
        else
            snprintf(line, sizeof line, "tick %llu ok\n", (unsigned long long)box.ticks);
        logline(line);
        usleep(100000);
    }
}
