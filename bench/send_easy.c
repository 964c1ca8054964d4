/* Baseline for bench/send.lua: POST the same bytes N times over one reused
 * libcurl easy handle, with the options the library uses (TLS verification,
 * CA cache kept working, no Expect). Prints one key=value line.
 *
 * Build:  cc -O2 -o build/bench/send_easy bench/send_easy.c -lcurl
 * Run:    send_easy URL CA_FILE BODY_FILE N SITE TOKEN CHANNEL [1.1|2]
 *         (HTTP version, default 1.1 like the library's client)
 */
#define _POSIX_C_SOURCE 200809L
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

static size_t sink(char *p, size_t s, size_t n, void *ud) {
    (void)p; (void)ud;
    return s * n;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static char *slurp(const char *path, long *len) {
    FILE *f = fopen(path, "rb");
    char *buf;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    *len = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t)*len + 1);
    if (buf && fread(buf, 1, (size_t)*len, f) != (size_t)*len) { free(buf); buf = NULL; }
    fclose(f);
    return buf;
}

int main(int argc, char **argv) {
    char hdr[3][512];
    struct curl_slist *h = NULL;
    long len = 0, status = 0;
    int n, i, ok = 0;
    char *body;
    double t0, c0, t1, c1;
    CURL *e;
    if (argc != 8 && argc != 9) {
        fprintf(stderr, "usage: %s URL CA_FILE BODY_FILE N SITE TOKEN CHANNEL [1.1|2]\n", argv[0]);
        return 2;
    }
    body = slurp(argv[3], &len);
    if (!body) { fprintf(stderr, "cannot read %s\n", argv[3]); return 2; }
    n = atoi(argv[4]);
    snprintf(hdr[0], sizeof hdr[0], "site: %s", argv[5]);
    snprintf(hdr[1], sizeof hdr[1], "siteToken: %s", argv[6]);
    snprintf(hdr[2], sizeof hdr[2], "channel: %s", argv[7]);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    e = curl_easy_init();
    for (i = 0; i < 3; i++) h = curl_slist_append(h, hdr[i]);
    h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "Accept: application/json");
    h = curl_slist_append(h, "Expect:");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_URL, argv[1]);
    curl_easy_setopt(e, CURLOPT_CAINFO, argv[2]);
    curl_easy_setopt(e, CURLOPT_CAPATH, (char *)NULL);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, len);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "send_easy/1");
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, argc == 9 && strcmp(argv[8], "2") == 0
                                                  ? (long)CURL_HTTP_VERSION_2TLS
                                                  : (long)CURL_HTTP_VERSION_1_1);
    t0 = now();
    c0 = cpu();
    for (i = 0; i < n; i++) {
        CURLcode rc = curl_easy_perform(e);
        if (rc == CURLE_OK && curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK &&
            status == 200)
            ok++;
        else if (ok == i)
            fprintf(stderr, "request %d failed: %s, status %ld\n", i, curl_easy_strerror(rc), status);
    }
    t1 = now();
    c1 = cpu();
    printf("orders=%d ok=%d seconds=%.6f cpu=%.6f\n", n, ok, t1 - t0, c1 - c0);
    curl_slist_free_all(h);
    curl_easy_cleanup(e);
    curl_global_cleanup();
    free(body);
    return ok == n ? 0 : 1;
}
