/* What garden-init's launcher and its spawn server (spawn-server.c) share. */
#ifndef TRELLIS_GARDEN_INIT_H
#define TRELLIS_GARDEN_INIT_H
#include <stddef.h>
#include <sys/types.h>

/* Finds PROG as execvp would with PATH (NULL: the default), as the user the process now is: 0 or an errno. */
int resolve(const char *prog, const char *path, char *out, size_t outlen);
/* stdio (0-2) becomes the user's, as runc does for a user: 0 or an errno. */
int give_stdio(uid_t uid);
/* init that also serves spawn requests from the host; returns when told to stop. */
int spawn_server(void);

#endif
