/* A stand-in for gpu-hostmem-ioreqd in plugin tests (built as a binary
 * named gpu-hostmem-ioreqd): writes its state into the file-backed fake
 * xenstore of fakexen.c (FAKEXS_ROOT) as the real one would, by mode
 * (FAKE_IOREQD_MODE): ok = running until SIGTERM, then remove the record;
 * fail = record "failed: ..." and exit 1; exit = exit 0 without running;
 * stubborn = running, ignores SIGTERM. With --ready-path P it also writes
 * "running" (ok, stubborn) or the failure (fail) into P, libxl's node. */
#define _XOPEN_SOURCE 700
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_term(int s) { (void)s; stop = 1; }
static int rm_one(const char *p, const struct stat *st, int f, struct FTW *w) { return remove(p); }

static void put(const char *dir, const char *key, const char *val)
{
    char p[PATH_MAX];
    FILE *f;
    snprintf(p, sizeof(p), "%s/%s", dir, key);
    mkdir(p, 0755);
    snprintf(p, sizeof(p), "%s/%s/.value", dir, key);
    if ((f = fopen(p, "w"))) {
        fputs(val, f);
        fclose(f);
    }
}

int main(int argc, char **argv)
{
    const char *root = getenv("FAKEXS_ROOT"), *mode = getenv("FAKE_IOREQD_MODE");
    const char *domid = NULL, *ready = NULL;
    char dir[PATH_MAX], rdir[PATH_MAX], pid[32];
    int i;

    for (i = 1; i + 1 < argc; i++) {
        if (!strcmp(argv[i], "--domid"))
            domid = argv[i + 1];
        if (!strcmp(argv[i], "--ready-path"))
            ready = argv[i + 1];
    }
    if (!root || !domid)
        return 2;
    if (!mode)
        mode = "ok";
    snprintf(dir, sizeof(dir), "%s/local/domain/0/gpu-hostmem/%s", root, domid);
    fprintf(stderr, "fake ioreqd for domain %s, mode %s\n", domid, mode);
    /* put() creates one level: the ready node's parent is libxl's. */
    if (ready)
        snprintf(rdir, sizeof(rdir), "%s%s", root, ready);
    if (ready && strrchr(rdir, '/'))
        *strrchr(rdir, '/') = '\0';
    if (!strcmp(mode, "fail")) {
        put(dir, "state", "failed: ioreq server: setup stage CreateServer: ENOSYS");
        if (ready)
            put(rdir, strrchr(ready, '/') + 1,
                "failed: ioreq server: setup stage CreateServer: ENOSYS");
        return 1;
    }
    if (!strcmp(mode, "exit"))
        return 0;
    signal(SIGTERM, strcmp(mode, "stubborn") ? on_term : SIG_IGN);
    snprintf(pid, sizeof(pid), "%d", (int)getpid());
    put(dir, "pid", pid);
    /* The unique id of the fake guest, as fakexen.c reports it (the first
     * 8 bytes of FAKE_UUID, little endian), when the fake guest is ours. */
    {
        const char *envd = getenv("FAKE_DOMID"), *envu = getenv("FAKE_UUID");

        if (envd && envu && strlen(envu) == 32 && !strcmp(envd, domid)) {
            unsigned long long id = 0;
            char uid[32];

            for (i = 7; i >= 0; i--) {
                unsigned b;

                sscanf(envu + 2 * i, "%2x", &b);
                id = (id << 8) | b;
            }
            snprintf(uid, sizeof(uid), "%llu", id);
            put(dir, "unique-id", uid);
        }
    }
    put(dir, "ioservid", "3");
    put(dir, "state", "running");
    if (ready)
        put(rdir, strrchr(ready, '/') + 1, "running");
    while (!stop)
        pause();
    nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}
