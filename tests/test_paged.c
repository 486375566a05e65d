/* test_paged.c - the paged elastic cache (ekv.h >>paged): (a) the same appends and anchor
   steps on a paged cache (every page size) and on a contiguous one give the same stored
   bytes, slot by slot through ekv_page_row, and the same CPU-kernel output (bit for bit),
   for every dtype x policy on ragged batches of fresh random data; admit and gather copy
   exactly; (b) a pool stress test: random admit / append / compress / retire steps on a
   small pool, after every step the accounting checked by a test-side tally of the block
   tables (no page leaked, shared or held twice, used + free = total) and by
   ekv_paged_check, the contents against a contiguous shadow cache; (c) ekv_paged_check
   fails on planted corruptions, a full pool refuses and writes nothing, bad arguments;
   (d) a pool without storage (ekv_paged_pool_create) grows and shrinks by
   ekv_paged_resize under the same accounting, refuses what it cannot hold.
   Inputs are fresh random data each run; the seed is printed (rerun with --seed=N).

   Build: cc -std=c99 -O2 -Wall -Wextra -I. -o build/test_paged tests/test_paged.c tests/ekv_impl.c -lm */
#include "ekv.h"
#include "tests/ekv_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t run_seed;
static ekv_rng test_rng;

static const ekv_dtype all_dtypes[EKV_DTYPE_COUNT] = {EKV_DTYPE_F32, EKV_DTYPE_F16, EKV_DTYPE_BF16,
                                                      EKV_DTYPE_INT8, EKV_DTYPE_INT4, EKV_DTYPE_FP8};
static const ekv_policy all_policies[] = {EKV_POLICY_NONE, EKV_POLICY_STRIDE, EKV_POLICY_POOL,
                                          EKV_POLICY_WINDOW, EKV_POLICY_TOPK};
static const int page_sizes[] = {8, 16, 32, 64};

/* Normal values, never exactly zero (a zero row would hide a row never written). */
static void fill_random(float *x, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++) {
        float value = (float)ekv_rng_normal(&test_rng);
        x[i] = value == 0.0f ? 0.5f : value;
    }
}

static ekv_compress_desc make_desc(ekv_policy policy)
{
    ekv_compress_desc d;
    memset(&d, 0, sizeof d);
    d.policy = policy;
    d.compression = policy == EKV_POLICY_NONE ? 1 : 2 + (int)ekv_rng_below(&test_rng, 3);
    d.recent = (int)ekv_rng_below(&test_rng, 6);
    d.sinks = (int)ekv_rng_below(&test_rng, 4);
    d.observe = 3;
    return d;
}

/* Every page poisoned, so that a slot read that the operations never wrote differs. */
static void poison_paged(ekv_paged_cache *p)
{
    const size_t rows = (size_t)p->pages * (size_t)p->kv_heads * (size_t)p->page_size;
    const size_t scale_bytes = ekv_dtype_row_scale_bytes(p->dtype, p->head_dim);
    memset(p->k, 0xa5, rows * ekv_dtype_row_bytes(p->dtype, p->head_dim));
    memset(p->v, 0x5a, rows * ekv_dtype_row_bytes(p->dtype, p->head_dim));
    if (scale_bytes) {
        memset(p->k_scales, 0xa5, rows * scale_bytes);
        memset(p->v_scales, 0x5a, rows * scale_bytes);
    }
    if (p->bias) memset(p->bias, 0xff, rows * sizeof(float));
}

/* Slot t of (b, h): the paged cache's bytes (through ekv_page_row) equal the contiguous
   cache's, in every array; fp8 head scales, lengths and compressed counts equal. Returns
   the number of differing slots. */
static int compare_contents(const ekv_paged_cache *p, const ekv_host_cache *c)
{
    const size_t row_bytes = ekv_dtype_row_bytes(p->dtype, p->head_dim);
    const size_t scale_bytes = ekv_dtype_row_scale_bytes(p->dtype, p->head_dim);
    int b, h, t, which, bad = 0;
    for (b = 0; b < p->batch; b++) {
        if (p->lengths[b] != c->lengths[b] || p->compressed[b] != c->compressed[b]) {
            bad++;
            continue;
        }
        for (h = 0; h < p->kv_heads; h++) {
            const size_t head = (size_t)b * (size_t)p->kv_heads + (size_t)h;
            if (p->dtype == EKV_DTYPE_FP8 &&
                (memcmp(p->k_scales + head * 4, c->k_scales + head * 4, 4) != 0 ||
                 memcmp(p->v_scales + head * 4, c->v_scales + head * 4, 4) != 0))
                bad++;
            for (t = 0; t < p->lengths[b]; t++) {
                const size_t pr = ekv_page_row(p->block_table, p->table_width, p->page_shift,
                                               p->kv_heads, (size_t)b, (size_t)h, (size_t)t);
                const size_t cr = head * (size_t)c->capacity + (size_t)t;
                int differs = 0;
                for (which = 0; which < 2; which++) {
                    differs |= memcmp((which ? p->v : p->k) + pr * row_bytes,
                                      (which ? c->v : c->k) + cr * row_bytes, row_bytes) != 0;
                    if (scale_bytes)
                        differs |= memcmp((which ? p->v_scales : p->k_scales) + pr * scale_bytes,
                                          (which ? c->v_scales : c->k_scales) + cr * scale_bytes,
                                          scale_bytes) != 0;
                }
                if (c->bias) differs |= !p->bias || memcmp(&p->bias[pr], &c->bias[cr], 4) != 0;
                bad += differs;
            }
        }
    }
    return bad;
}

/* Test-side tally of the pool from the block tables alone: every page held by at most one
   table entry, held pages = ceil(length / P), held + free = total, every free-list page
   unheld. Returns a description of the first breach, or NULL. */
static const char *tally(const ekv_paged_cache *p)
{
    static char why[160];
    int *holders = (int *)calloc((size_t)p->pages, sizeof(int));
    int b, i, held = 0;
    const char *result = NULL;
    for (b = 0; b < p->batch && !result; b++) {
        const int want = (p->lengths[b] + p->page_size - 1) / p->page_size;
        int entries = 0;
        for (i = 0; i < p->table_width; i++) {
            const int page = p->block_table[b * p->table_width + i];
            if (page < 0) continue;
            if (page >= p->pages || i >= want) {
                sprintf(why, "sequence %d entry %d: page %d (pages %d, wants %d)", b, i, page,
                        p->pages, want);
                result = why;
                break;
            }
            holders[page]++;
            entries++;
        }
        if (!result && entries != want) {
            sprintf(why, "sequence %d holds %d pages for %d slots", b, entries, p->lengths[b]);
            result = why;
        }
        held += entries;
    }
    for (i = 0; i < p->free_count && !result; i++)
        if (p->free_pages[i] < 0 || p->free_pages[i] >= p->pages || holders[p->free_pages[i]]++) {
            sprintf(why, "free page %d also held or listed twice", p->free_pages[i]);
            result = why;
        }
    for (i = 0; i < p->pages && !result; i++)
        if (holders[i] != 1) {
            sprintf(why, "page %d has %d owners (free list counted)", i, holders[i]);
            result = why;
        }
    if (!result && held + p->free_count != p->pages) {
        sprintf(why, "held %d + free %d != %d pages", held, p->free_count, p->pages);
        result = why;
    }
    free(holders);
    return result;
}

/* CPU kernel over the paged cache (gathered) and over the contiguous one: bit for bit. */
static int same_attention(const ekv_paged_cache *p, const ekv_host_cache *c, const float *q,
                          int heads)
{
    const size_t n = (size_t)p->batch * (size_t)heads * (size_t)p->head_dim;
    float *out_paged = (float *)malloc(n * sizeof(float)), *out_flat = (float *)malloc(n * sizeof(float));
    ekv_host_cache gathered;
    ekv_cpu_options options;
    int same = 0;
    memset(&options, 0, sizeof options);
    options.threads = 1;
    memset(out_paged, 0xff, n * sizeof(float)); /* NaN: an unwritten output fails */
    memset(out_flat, 0x7f, n * sizeof(float));
    if (ekv_paged_gather(p, &gathered) == EKV_SUCCESS &&
        ekv_cpu_attention_with(&gathered, q, heads, 0.0f, &options, out_paged) == EKV_SUCCESS &&
        ekv_cpu_attention_with(c, q, heads, 0.0f, &options, out_flat) == EKV_SUCCESS)
        same = memcmp(out_paged, out_flat, n * sizeof(float)) == 0;
    ekv_cache_free(&gathered);
    free(out_paged);
    free(out_flat);
    return same;
}

/* (a) appends with a random active mask and anchor steps, the same on both caches. */
static void test_paged_equals_contiguous(void)
{
    enum { BATCH = 3, KV_HEADS = 2, GROUP = 2, D = 64, STEPS = 90, CAPACITY = 96 };
    const int heads = KV_HEADS * GROUP, observe = 3;
    float k[BATCH * KV_HEADS * D], v[BATCH * KV_HEADS * D];
    float *q = (float *)malloc((size_t)BATCH * heads * D * sizeof(float));
    float *q_observe = (float *)malloc((size_t)BATCH * heads * observe * D * sizeof(float));
    size_t di, pi, si;
    for (di = 0; di < EKV_DTYPE_COUNT; di++)
        for (pi = 0; pi < sizeof all_policies / sizeof all_policies[0]; pi++) {
            char name[96];
            int mismatched_bytes = 0, mismatched_out = 0, bad_tally = 0, freed = 0;
            sprintf(name, "paged = contiguous: %s, %s, page sizes 8..64",
                    ekv_dtype_name(all_dtypes[di]), ekv_policy_name(all_policies[pi]));
            TEST_BEGIN(name);
            for (si = 0; si < sizeof page_sizes / sizeof page_sizes[0]; si++) {
                const ekv_compress_desc desc = make_desc(all_policies[pi]);
                const int with_bias = all_policies[pi] == EKV_POLICY_POOL;
                const int P = page_sizes[si];
                const int pages = BATCH * ((CAPACITY + P - 1) / P);
                ekv_paged_cache paged;
                ekv_host_cache flat;
                int step, b;
                CHECK(ekv_paged_create(&paged, all_dtypes[di], BATCH, KV_HEADS, D, P, pages,
                                       CAPACITY, with_bias) == EKV_SUCCESS, "%s", ekv_last_error());
                CHECK(ekv_cache_create(&flat, all_dtypes[di], BATCH, KV_HEADS, D, CAPACITY,
                                       with_bias) == EKV_SUCCESS, "%s", ekv_last_error());
                if (!paged.k || !flat.k) return;
                poison_paged(&paged);
                for (step = 0; step < STEPS; step++) {
                    unsigned char active[BATCH];
                    for (b = 0; b < BATCH; b++)
                        active[b] = (unsigned char)(ekv_rng_below(&test_rng, 4) != 0 &&
                                                    flat.lengths[b] < CAPACITY);
                    fill_random(k, sizeof k / sizeof k[0]);
                    fill_random(v, sizeof v / sizeof v[0]);
                    CHECK(ekv_cache_append(&flat, k, v, active) == EKV_SUCCESS, "%s", ekv_last_error());
                    CHECK(ekv_paged_append(&paged, k, v, active) == EKV_SUCCESS, "%s", ekv_last_error());
                    if (step % 23 == 22) {
                        const int used_before = ekv_paged_pages_used(&paged);
                        fill_random(q_observe, (size_t)BATCH * heads * observe * D);
                        CHECK(ekv_cache_compress(&flat, &desc, q_observe, heads, observe, 0.0) ==
                                  EKV_SUCCESS, "%s", ekv_last_error());
                        CHECK(ekv_paged_compress(&paged, &desc, q_observe, heads, observe, 0.0) ==
                                  EKV_SUCCESS, "%s", ekv_last_error());
                        freed += used_before - ekv_paged_pages_used(&paged);
                    }
                    mismatched_bytes += compare_contents(&paged, &flat);
                    bad_tally += tally(&paged) != NULL || ekv_paged_check(&paged) != EKV_SUCCESS;
                }
                fill_random(q, (size_t)BATCH * heads * D);
                mismatched_out += !same_attention(&paged, &flat, q, heads);
                if (all_policies[pi] != EKV_POLICY_NONE && P == 8)
                    CHECK(freed > 0, "compression with page size 8 gave back no page (P %d)", P);
                ekv_paged_free(&paged);
                ekv_cache_free(&flat);
            }
            CHECK(mismatched_bytes == 0, "%d slot comparisons differ", mismatched_bytes);
            CHECK(mismatched_out == 0, "%d page sizes give a different CPU-kernel output",
                  mismatched_out);
            CHECK(bad_tally == 0, "pool accounting broken in %d steps", bad_tally);
            TEST_END();
        }
    free(q);
    free(q_observe);
}

/* admit copies a prefilled contiguous sequence exactly; gather gives it back. */
static void test_admit_gather(void)
{
    enum { BATCH = 3, KV_HEADS = 2, D = 64, CAPACITY = 70 };
    static float k[BATCH * KV_HEADS * CAPACITY * D], v[BATCH * KV_HEADS * CAPACITY * D];
    size_t di;
    TEST_BEGIN("admit and gather copy every dtype exactly, ragged lengths, P = 16");
    for (di = 0; di < EKV_DTYPE_COUNT; di++) {
        ekv_host_cache flat, back;
        ekv_paged_cache paged;
        int lengths[BATCH], b;
        for (b = 0; b < BATCH; b++) lengths[b] = 1 + (int)ekv_rng_below(&test_rng, CAPACITY);
        fill_random(k, sizeof k / sizeof k[0]);
        fill_random(v, sizeof v / sizeof v[0]);
        CHECK(ekv_cache_create(&flat, all_dtypes[di], BATCH, KV_HEADS, D, CAPACITY, 1) == EKV_SUCCESS,
              "%s", ekv_last_error());
        CHECK(ekv_cache_prefill(&flat, k, v, CAPACITY, lengths) == EKV_SUCCESS, "%s", ekv_last_error());
        CHECK(ekv_paged_create(&paged, all_dtypes[di], BATCH, KV_HEADS, D, 16, 20, CAPACITY, 1) ==
                  EKV_SUCCESS, "%s", ekv_last_error());
        if (!paged.k || !flat.k) return;
        poison_paged(&paged);
        /* admitted in reverse order: block tables do not follow sequence order */
        for (b = BATCH - 1; b >= 0; b--)
            CHECK(ekv_paged_admit(&paged, b, &flat, b) == EKV_SUCCESS, "%s", ekv_last_error());
        CHECK(compare_contents(&paged, &flat) == 0, "%s: admitted contents differ",
              ekv_dtype_name(all_dtypes[di]));
        CHECK(tally(&paged) == NULL, "%s", tally(&paged));
        CHECK(ekv_paged_gather(&paged, &back) == EKV_SUCCESS, "%s", ekv_last_error());
        for (b = 0; b < BATCH; b++) {
            int h, t;
            for (h = 0; h < KV_HEADS; h++)
                for (t = 0; t < lengths[b]; t++) {
                    float x[D], y[D];
                    ekv_cache_row(&flat, 0, b, h, t, x);
                    ekv_cache_row(&back, 0, b, h, t, y);
                    CHECK(memcmp(x, y, sizeof x) == 0, "%s: gathered K (%d, %d, %d) differs",
                          ekv_dtype_name(all_dtypes[di]), b, h, t);
                    ekv_cache_row(&flat, 1, b, h, t, x);
                    ekv_cache_row(&back, 1, b, h, t, y);
                    CHECK(memcmp(x, y, sizeof x) == 0, "%s: gathered V (%d, %d, %d) differs",
                          ekv_dtype_name(all_dtypes[di]), b, h, t);
                }
        }
        ekv_cache_free(&back);
        ekv_paged_free(&paged);
        ekv_cache_free(&flat);
    }
    TEST_END();
}

/* (b) random admit / append / compress / retire on a pool too small for every sequence at
   once, checked after every step; a contiguous shadow takes the same operations (retire:
   its counters and fp8 scales reset by hand, as ekv_paged_retire documents). */
static void test_pool_stress(void)
{
    enum { BATCH = 6, KV_HEADS = 2, GROUP = 2, D = 64, CAPACITY = 128, P = 8, PAGES = 24,
           STEPS = 3000, FILL_EVERY = 1000, FILL = 48 };
    const int heads = KV_HEADS * GROUP, observe = 2;
    float k[BATCH * KV_HEADS * D], v[BATCH * KV_HEADS * D];
    static float q_observe[BATCH * KV_HEADS * GROUP * 2 * D];
    ekv_paged_cache paged;
    ekv_host_cache shadow;
    const ekv_dtype dtype = all_dtypes[ekv_rng_below(&test_rng, EKV_DTYPE_COUNT)];
    int step, b, accounting = 0, contents = 0, refused = 0, compressions = 0, retires = 0;
    char name[96];
    sprintf(name, "pool stress: %d random steps, %d pages of %d, %s", STEPS, PAGES, P,
            ekv_dtype_name(dtype));
    TEST_BEGIN(name);
    CHECK(ekv_paged_create(&paged, dtype, BATCH, KV_HEADS, D, P, PAGES, CAPACITY, 1) == EKV_SUCCESS,
          "%s", ekv_last_error());
    CHECK(ekv_cache_create(&shadow, dtype, BATCH, KV_HEADS, D, CAPACITY, 1) == EKV_SUCCESS, "%s",
          ekv_last_error());
    if (!paged.k || !shadow.k) return;
    poison_paged(&paged);
    for (step = 0; step < STEPS; step++) {
        /* every FILL_EVERY steps a burst of FILL appends to every sequence below capacity: at
           most one sequence can sit at capacity (16 pages of 24), so the other five grow by
           FILL tokens each, 5 * FILL / P = 30 pages > PAGES, and the burst must reach a full
           pool; between bursts the walk is random (it reached a full pool only by chance) */
        const int burst = step % FILL_EVERY < FILL;
        const int op = burst ? 0 : (int)ekv_rng_below(&test_rng, 20);
        if (op < 16) { /* append to a random subset (to all, in a burst) */
            unsigned char active[BATCH];
            int need = 0;
            for (b = 0; b < BATCH; b++) {
                active[b] = (unsigned char)((burst || ekv_rng_below(&test_rng, 2)) &&
                                            shadow.lengths[b] < CAPACITY);
                need += active[b] && shadow.lengths[b] % P == 0;
            }
            fill_random(k, sizeof k / sizeof k[0]);
            fill_random(v, sizeof v / sizeof v[0]);
            if (need > paged.free_count) {
                const int used = ekv_paged_pages_used(&paged);
                CHECK(ekv_paged_append(&paged, k, v, active) == EKV_ERR_OUT_OF_MEMORY,
                      "a full pool must refuse (need %d, free %d)", need, paged.free_count);
                CHECK(ekv_paged_pages_used(&paged) == used, "a refused append took pages");
                refused++;
            } else {
                CHECK(ekv_cache_append(&shadow, k, v, active) == EKV_SUCCESS, "%s", ekv_last_error());
                CHECK(ekv_paged_append(&paged, k, v, active) == EKV_SUCCESS, "%s", ekv_last_error());
            }
        } else if (op < 18) { /* anchor step, a random policy */
            ekv_compress_desc desc = make_desc(all_policies[ekv_rng_below(&test_rng, 5)]);
            fill_random(q_observe, sizeof q_observe / sizeof q_observe[0]);
            desc.observe = observe;
            CHECK(ekv_cache_compress(&shadow, &desc, q_observe, heads, observe, 0.0) == EKV_SUCCESS,
                  "%s", ekv_last_error());
            CHECK(ekv_paged_compress(&paged, &desc, q_observe, heads, observe, 0.0) == EKV_SUCCESS,
                  "%s", ekv_last_error());
            compressions++;
        } else { /* retire one sequence (it is admitted again by its next append) */
            const int which = (int)ekv_rng_below(&test_rng, BATCH);
            CHECK(ekv_paged_retire(&paged, which) == EKV_SUCCESS, "%s", ekv_last_error());
            shadow.lengths[which] = shadow.compressed[which] = 0;
            if (dtype == EKV_DTYPE_FP8) {
                memset(shadow.k_scales + (size_t)which * KV_HEADS * 4, 0, KV_HEADS * 4);
                memset(shadow.v_scales + (size_t)which * KV_HEADS * 4, 0, KV_HEADS * 4);
            }
            CHECK(paged.held[which] == 0, "a retired sequence holds %d pages", paged.held[which]);
            retires++;
        }
        {
            const char *why = tally(&paged);
            if (why || ekv_paged_check(&paged) != EKV_SUCCESS) {
                if (accounting++ < 3)
                    printf("  step %d: %s / %s\n", step, why ? why : "tally ok", ekv_last_error());
            }
        }
        contents += compare_contents(&paged, &shadow) != 0;
    }
    CHECK(accounting == 0, "pool accounting broken after %d of %d steps", accounting, STEPS);
    CHECK(contents == 0, "contents differ from the contiguous shadow after %d steps", contents);
    CHECK(refused > 0 && compressions > 0 && retires > 0,
          "the stress run must reach a full pool (%d), anchor steps (%d) and retires (%d)",
          refused, compressions, retires);
    for (b = 0; b < BATCH; b++) CHECK(ekv_paged_retire(&paged, b) == EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(paged.free_count == PAGES, "all retired: %d of %d pages free", paged.free_count, PAGES);
    ekv_paged_free(&paged);
    ekv_cache_free(&shadow);
    TEST_END();
}

/* (c) the check fails on each planted corruption; bad arguments are refused. */
static void test_check_and_errors(void)
{
    ekv_paged_cache p;
    float k[2 * 64], v[2 * 64];
    int i, saved;
    TEST_BEGIN("ekv_paged_check catches a shared, a leaked and a double-listed page");
    CHECK(ekv_paged_create(&p, EKV_DTYPE_F16, 2, 1, 64, 16, 8, 64, 0) == EKV_SUCCESS, "%s",
          ekv_last_error());
    if (!p.k) return;
    fill_random(k, 128);
    fill_random(v, 128);
    for (i = 0; i < 20; i++) CHECK(ekv_paged_append(&p, k, v, NULL) == EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(ekv_paged_check(&p) == EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(ekv_paged_pages_used(&p) == 4 && p.free_count == 4, "used %d free %d",
          ekv_paged_pages_used(&p), p.free_count);
    /* shared: sequence 1's second page names sequence 0's first */
    saved = p.block_table[p.table_width + 1];
    p.block_table[p.table_width + 1] = p.block_table[0];
    CHECK(ekv_paged_check(&p) != EKV_SUCCESS, "a shared page passed");
    CHECK(tally(&p) != NULL, "the test's tally missed a shared page");
    p.block_table[p.table_width + 1] = saved;
    /* leaked: one page off the free list */
    p.free_count--;
    CHECK(ekv_paged_check(&p) != EKV_SUCCESS, "a leaked page passed");
    CHECK(tally(&p) != NULL, "the test's tally missed a leaked page");
    p.free_count++;
    /* double-listed: a held page also free */
    saved = p.free_pages[0];
    p.free_pages[0] = p.block_table[0];
    CHECK(ekv_paged_check(&p) != EKV_SUCCESS, "a held page on the free list passed");
    CHECK(tally(&p) != NULL, "the test's tally missed a held page on the free list");
    p.free_pages[0] = saved;
    CHECK(ekv_paged_check(&p) == EKV_SUCCESS, "restored: %s", ekv_last_error());
    TEST_END();

    TEST_BEGIN("errors: bad page size, full sequence, retire out of range, mismatched admit");
    {
        ekv_paged_cache bad;
        ekv_host_cache flat;
        CHECK(ekv_paged_create(&bad, EKV_DTYPE_F16, 1, 1, 64, 12, 4, 64, 0) == EKV_ERR_INVALID_ARG,
              "page size 12 accepted");
        CHECK(strstr(ekv_last_error(), "page_size 12") != NULL, "message: %s", ekv_last_error());
        CHECK(ekv_paged_create(&bad, EKV_DTYPE_F16, 1, 1, 64, 16, 0, 64, 0) == EKV_ERR_INVALID_ARG,
              "0 pages accepted");
        for (i = 20; i < 64; i++) CHECK(ekv_paged_append(&p, k, v, NULL) == EKV_SUCCESS, "%s", ekv_last_error());
        CHECK(ekv_paged_append(&p, k, v, NULL) == EKV_ERR_INVALID_ARG, "append past capacity");
        CHECK(p.lengths[0] == 64 && p.lengths[1] == 64, "a refused append wrote");
        CHECK(ekv_paged_retire(&p, 2) == EKV_ERR_INVALID_ARG, "retire of sequence 2 of 2");
        CHECK(ekv_cache_create(&flat, EKV_DTYPE_BF16, 1, 1, 64, 16, 0) == EKV_SUCCESS, "%s",
              ekv_last_error());
        CHECK(ekv_paged_retire(&p, 0) == EKV_SUCCESS, "%s", ekv_last_error());
        CHECK(ekv_paged_admit(&p, 0, &flat, 0) == EKV_ERR_INVALID_ARG, "bf16 admitted into f16");
        CHECK(ekv_paged_admit(&p, 1, &flat, 0) == EKV_ERR_INVALID_ARG, "admitted into a held sequence");
        ekv_cache_free(&flat);
        CHECK(ekv_paged_check(&p) == EKV_SUCCESS, "%s", ekv_last_error());
    }
    ekv_paged_free(&p);
    TEST_END();
}

/* (d) the pool without storage that the cycle's serving simulation counts pages with. */
static void test_pool_without_storage(void)
{
    ekv_paged_cache pool, cache;
    int i, step;
    TEST_BEGIN("pool without storage: resize takes and gives back pages, accounting exact, refusals");
    CHECK(ekv_paged_pool_create(&pool, 3, 16, 10, 100) == EKV_SUCCESS, "%s", ekv_last_error());
    if (!pool.block_table) return;
    CHECK(pool.k == NULL && pool.table_width == 7, "storage %p, width %d", (void *)pool.k, pool.table_width);
    for (step = 0; step < 400; step++) {
        const int b = (int)ekv_rng_below(&test_rng, 3), length = (int)ekv_rng_below(&test_rng, 113); /* 7 pages of 16 */
        const int need = (length + 15) / 16, before = pool.free_count, held = pool.held[b];
        const ekv_result r = ekv_paged_resize(&pool, b, length);
        if (need - held > before) {
            CHECK(r == EKV_ERR_OUT_OF_MEMORY && pool.free_count == before && pool.held[b] == held,
                  "step %d: %d pages over the free %d taken or not refused", step, need - held, before);
        } else {
            CHECK(r == EKV_SUCCESS && pool.lengths[b] == length && pool.held[b] == need &&
                      pool.free_count == before - (need - held),
                  "step %d: %s", step, ekv_last_error());
        }
        CHECK(ekv_paged_check(&pool) == EKV_SUCCESS, "step %d: %s", step, ekv_last_error());
        CHECK(tally(&pool) == NULL, "step %d: %s", step, tally(&pool));
        if (step % 50 == 49) CHECK(ekv_paged_retire(&pool, b) == EKV_SUCCESS && pool.held[b] == 0, "retire");
    }
    CHECK(ekv_paged_resize(&pool, 0, 113) == EKV_ERR_INVALID_ARG, "beyond the 7 pages of the table");
    CHECK(ekv_paged_resize(&pool, 3, 1) == EKV_ERR_INVALID_ARG, "sequence 3 of 3");
    for (i = 0; i < 3; i++) CHECK(ekv_paged_retire(&pool, i) == EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(pool.free_count == 10 && ekv_paged_check(&pool) == EKV_SUCCESS, "all back: %d free", pool.free_count);
    CHECK(ekv_paged_append(&pool, NULL, NULL, NULL) == EKV_ERR_INVALID_ARG &&
              strstr(ekv_last_error(), "without storage") != NULL,
          "append on a pool without storage: %s", ekv_last_error());
    ekv_paged_free(&pool);
    CHECK(ekv_paged_create(&cache, EKV_DTYPE_F16, 1, 1, 64, 16, 4, 64, 0) == EKV_SUCCESS, "%s", ekv_last_error());
    CHECK(ekv_paged_resize(&cache, 0, 5) == EKV_ERR_INVALID_ARG, "resize of a cache with storage");
    ekv_paged_free(&cache);
    TEST_END();
}

int main(int argc, char **argv)
{
    int i;
    run_seed = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 32);
    for (i = 1; i < argc; i++)
        if (strncmp(argv[i], "--seed=", 7) == 0) run_seed = strtoull(argv[i] + 7, NULL, 10);
    printf("test_paged: seed %llu (rerun with --seed=%llu)\n", (unsigned long long)run_seed,
           (unsigned long long)run_seed);
    ekv_rng_seed(&test_rng, run_seed);
    test_paged_equals_contiguous();
    test_admit_gather();
    test_pool_stress();
    test_check_and_errors();
    test_pool_without_storage();
    return ekv_test_finish();
}
