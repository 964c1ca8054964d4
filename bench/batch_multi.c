/* Baseline for bench/batch.lua: the best hand-written libcurl client — POST
 * the same bytes N times through one curl multi handle with C in flight,
 * reusing C easy handles (keep-alive, HTTP/2 multiplexing when offered),
 * TLS verified with the CA cache working. Prints one key=value line.
 *
 * Build:  cc -O2 -o build/bench/batch_multi bench/batch_multi.c -lcurl
 * Run:    batch_multi URL CA_FILE BODY_FILE N CONCURRENCY SITE TOKEN CHANNEL
 */
#define _POSIX_C_SOURCE 200809L
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    CURLM *m;
    CURL **easy;
    long len = 0, n, conc, started = 0, done = 0, failed = 0, i;
    int running = 0;
    char *body;
    double t0, t1;
    if (argc != 9) {
        fprintf(stderr, "usage: %s URL CA_FILE BODY_FILE N CONCURRENCY SITE TOKEN CHANNEL\n", argv[0]);
        return 2;
    }
    body = slurp(argv[3], &len);
    if (!body) { perror(argv[3]); return 2; }
    n = atol(argv[4]);
    conc = atol(argv[5]);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    snprintf(hdr[0], sizeof hdr[0], "site: %s", argv[6]);
    snprintf(hdr[1], sizeof hdr[1], "siteToken: %s", argv[7]);
    snprintf(hdr[2], sizeof hdr[2], "channel: %s", argv[8]);
    for (i = 0; i < 3; i++) h = curl_slist_append(h, hdr[i]);
    h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "Accept: application/json");
    h = curl_slist_append(h, "Expect:");
    m = curl_multi_init();
    curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, conc + 4);
    easy = calloc((size_t)conc, sizeof *easy);
    for (i = 0; i < conc; i++) {
        CURL *e = curl_easy_init();
        curl_easy_setopt(e, CURLOPT_URL, argv[1]);
        curl_easy_setopt(e, CURLOPT_CAINFO, argv[2]);
        curl_easy_setopt(e, CURLOPT_CAPATH, (char *)NULL);
        curl_easy_setopt(e, CURLOPT_CA_CACHE_TIMEOUT, 86400L);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sink);
        curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
        /* OO_HTTP=1.1 forces HTTP/1.1 (one connection per transfer in flight) */
        if (getenv("OO_HTTP") && strcmp(getenv("OO_HTTP"), "1.1") == 0)
            curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
        easy[i] = e;
    }
    t0 = now();
    for (i = 0; i < conc && started < n; i++, started++) curl_multi_add_handle(m, easy[i]);
    while (done < n) {
        CURLMsg *msg;
        int left;
        curl_multi_perform(m, &running);
        while ((msg = curl_multi_info_read(m, &left)) != NULL) {
            long status = 0;
            CURL *e = msg->easy_handle;
            if (msg->msg != CURLMSG_DONE) continue;
            curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
            if (msg->data.result != CURLE_OK || status != 200) failed++;
            done++;
            curl_multi_remove_handle(m, e);
            if (started < n) { curl_multi_add_handle(m, e); started++; }
        }
        if (done < n) curl_multi_poll(m, NULL, 0, 100, NULL);
    }
    t1 = now();
    printf("requests=%ld failed=%ld seconds=%.4f rps=%.1f\n", n, failed, t1 - t0, (double)n / (t1 - t0));
    for (i = 0; i < conc; i++) curl_easy_cleanup(easy[i]);
    curl_multi_cleanup(m);
    curl_slist_free_all(h);
    free(easy);
    free(body);
    return failed ? 1 : 0;
}
