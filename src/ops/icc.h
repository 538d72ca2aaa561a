/*
 * ops/icc: reads what a human calls an ICC profile (its description) from
 * the profile bytes, for the `icc` field of /info. Works on untrusted bytes:
 * every offset and length is checked, nothing is allocated.
 */
#ifndef OPS_ICC_H
#define OPS_ICC_H

#include <stddef.h>

/* Writes the description ('desc' tag, ICC.1 v2 textDescriptionType or v4
 * multiLocalizedUnicodeType, en-US preferred) of the profile into out as
 * NUL-terminated UTF-8: control characters dropped, white space collapsed and
 * trimmed, cut at outlen without splitting a character. Returns 0, or -1 when
 * the profile has no readable, non-empty description. Thread-safe. */
int ops_icc_description(const void *profile, size_t len, char *out, size_t outlen);

#endif
