/*
 * ctest: decodes msgproto messages with the mpproto.h helpers, prints the
 * canonical dump and re-encodes them. Driven by msgproto's TestCGolden.
 *
 *   ctest FILE...   each file holds one message
 *   ctest -         stdin holds records: u32 little-endian length, bytes
 *
 * For each message it prints the dump, "enc HEX" (the re-encoding) and a
 * "." line; for a rejected message "err KIND" and a "." line, KIND being
 * mp_strerror's text.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mpdump.h"

static uint8_t enc[MP_MAX_MSG];

static void one(const uint8_t *msg, size_t len)
{
	struct mp_hdr h;
	int rc = mp_check_msg(msg, len, &h);
	if (rc == MP_OK)
		rc = mpd_roundtrip(stdout, &h, msg + MP_HDR_SIZE, len - MP_HDR_SIZE, enc, sizeof enc);
	if (rc < 0) {
		printf("err %s\n.\n", mp_strerror(rc));
		return;
	}
	mpd_hex(stdout, "enc", enc, (size_t)rc);
	printf(".\n");
}

/* read_full reads exactly n bytes; it returns 0 at a clean end of input. */
static int read_full(FILE *f, uint8_t *p, size_t n)
{
	size_t got = fread(p, 1, n, f);
	if (got == n)
		return 1;
	if (got == 0 && feof(f))
		return 0;
	fprintf(stderr, "ctest: short read (%zu of %zu bytes)\n", got, n);
	exit(2);
}

int main(int argc, char **argv)
{
	/* Inputs may exceed MP_MAX_MSG so that oversize handling is exercised. */
	static uint8_t buf[2 * MP_MAX_MSG];
	int i;

	if (argc == 2 && strcmp(argv[1], "-") == 0) {
		uint8_t lenb[4];
		while (read_full(stdin, lenb, 4)) {
			uint32_t n = mp_get32(lenb);
			if (n > sizeof buf) {
				fprintf(stderr, "ctest: record of %u bytes too large\n", (unsigned)n);
				return 2;
			}
			if (n > 0 && !read_full(stdin, buf, n)) {
				fprintf(stderr, "ctest: truncated record\n");
				return 2;
			}
			/* Copy into an exact-size heap block so that ASan sees any read
			 * past the end of the message. */
			uint8_t *msg = malloc(n ? n : 1);
			if (msg == NULL) {
				perror("ctest: malloc");
				return 2;
			}
			memcpy(msg, buf, n);
			one(msg, n);
			free(msg);
		}
		return 0;
	}
	for (i = 1; i < argc; i++) {
		FILE *f = fopen(argv[i], "rb");
		size_t n;
		if (f == NULL) {
			perror(argv[i]);
			return 2;
		}
		n = fread(buf, 1, sizeof buf, f);
		if (ferror(f)) {
			perror(argv[i]);
			fclose(f);
			return 2;
		}
		fclose(f);
		one(buf, n);
	}
	return 0;
}
