/* File safety for files that hold orders (personal data): identity by
 * device + inode (so an output never overwrites its own input, whatever
 * the spelling: "./x", "d/../x", a symlink), private creation (0600 whatever
 * the umask, O_NOFOLLOW, optionally O_EXCL), private directories. Lua:
 * core.umask, core.chmod, core.file_id, core.euid, core.create_private,
 * core.mkdir_private. The Lua face is optimizely.offline.files. */
#define _POSIX_C_SOURCE 200809L
#include "core.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

/* nil, {kind = "io", message = "<what> <path>: <strerror>", errno} */
static int push_errno(lua_State *L, const char *what, const char *path) {
    oo_error err = {"io", NULL, 0, NULL, OO_ERR_UNSET, 0};
    err.sys_errno = errno;
    lua_pushfstring(L, "%s %s: %s", what, path, strerror(err.sys_errno));
    err.message = lua_tostring(L, -1);
    oo_push_error(L, &err);
    lua_remove(L, -3); /* the message's own copy */
    return 2;
}

/*** core.umask(mask) -> previous mask */
static int l_umask(lua_State *L) {
    lua_Integer m = luaL_checkinteger(L, 1);
    luaL_argcheck(L, m >= 0 && m <= 0777, 1, "mask must be 0..0777");
    lua_pushinteger(L, (lua_Integer)umask((mode_t)m));
    return 1;
}

/*** core.chmod(path, mode) -> true | nil, err {kind = "io", message, errno} */
static int l_chmod(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    lua_Integer m = luaL_checkinteger(L, 2);
    luaL_argcheck(L, m >= 0 && m <= 07777, 2, "mode must be 0..07777");
    if (chmod(path, (mode_t)m) != 0) return push_errno(L, "cannot chmod", path);
    lua_pushboolean(L, 1);
    return 1;
}

static const char *type_name(mode_t m) {
    if (S_ISREG(m)) return "file";
    if (S_ISDIR(m)) return "directory";
    if (S_ISLNK(m)) return "link";
    if (S_ISFIFO(m)) return "fifo";
    if (S_ISCHR(m)) return "device";
    return "other";
}

/*** core.file_id(path [, nofollow]) -> "dev:ino", type, mode, uid | nil, err {kind = "io", message, errno}
 * Two paths name the same file when their ids are equal; uid is the owner. */
static int l_file_id(lua_State *L) {
    const char *path = luaL_checkstring(L, 1);
    int nofollow = lua_toboolean(L, 2);
    struct stat st;
    char id[64];
    if ((nofollow ? lstat(path, &st) : stat(path, &st)) != 0)
        return push_errno(L, "cannot stat", path);
    snprintf(id, sizeof id, "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino);
    lua_pushstring(L, id);
    lua_pushstring(L, type_name(st.st_mode));
    lua_pushinteger(L, (lua_Integer)(st.st_mode & 07777));
    lua_pushinteger(L, (lua_Integer)st.st_uid);
    return 4;
}

/*** core.euid() -> the effective user id of the process */
static int l_euid(lua_State *L) {
    lua_pushinteger(L, (lua_Integer)geteuid());
    return 1;
}

/*** core.create_private(path, how) -> true | nil, err {kind = "io", message, errno}
 * Makes `path` a regular file readable and writable by its owner only,
 * never following a symlink at `path`. how: "new" (an existing file or
 * dangling link is an error, EEXIST), "truncate" or "keep" (its content). */
static int l_create_private(lua_State *L) {
    static const char *const hows[] = {"new", "truncate", "keep", NULL};
    static const int how_flags[] = {O_EXCL, O_TRUNC, 0};
    const char *path = luaL_checkstring(L, 1);
    int how = luaL_checkoption(L, 2, NULL, hows);
    int flags = O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | how_flags[how];
    int fd = open(path, flags, 0600);
    struct stat st;
    if (fd < 0) return push_errno(L, "cannot create", path);
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        errno = EINVAL;
        return push_errno(L, "not a regular file:", path);
    }
    /* an existing file keeps its mode through O_TRUNC: make it private */
    if ((st.st_mode & 0777) != 0600 && fchmod(fd, 0600) != 0) {
        close(fd);
        return push_errno(L, "cannot chmod", path);
    }
    close(fd);
    lua_pushboolean(L, 1);
    return 1;
}

/*** core.mkdir_private(path) -> true | nil, err {kind = "io", message, errno}
 * Makes the directory `path` and any missing parent, each new one 0700
 * whatever the umask (existing ones are left as they are), like the XDG
 * base directories must be. */
static int l_mkdir_private(lua_State *L) {
    size_t n, i;
    const char *path = luaL_checklstring(L, 1, &n);
    char *p = (char *)lua_newuserdata(L, n + 1); /* scratch: collected with the call */
    struct stat st;
    memcpy(p, path, n + 1);
    for (i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != '\0') continue;
        p[i] = '\0';
        if (mkdir(p, 0700) == 0) {
            if (chmod(p, 0700) != 0) return push_errno(L, "cannot chmod", p);
        } else if (errno != EEXIST || stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) {
            if (errno == EEXIST) errno = ENOTDIR;
            return push_errno(L, "cannot create the directory", p);
        }
        p[i] = i < n ? '/' : '\0';
    }
    lua_pushboolean(L, 1);
    return 1;
}

void oo_fs_register(lua_State *L) {
    static const luaL_Reg funcs[] = {{"umask", l_umask},
                                     {"chmod", l_chmod},
                                     {"file_id", l_file_id},
                                     {"euid", l_euid},
                                     {"create_private", l_create_private},
                                     {"mkdir_private", l_mkdir_private},
                                     {NULL, NULL}};
    oo_setfuncs(L, funcs, 0);
}
