/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Shared by the klpfleet lab's callback livepatches: the four callbacks, each logging one line in the
 * selftests' format. The including file defines LAB_PRE_PATCH_RET, what every pre_patch returns.
 */
#ifndef KLPFLEET_LAB_CALLBACKS_LOG_H
#define KLPFLEET_LAB_CALLBACKS_LOG_H

#include <linux/livepatch.h>
#include <linux/module.h>

static const char *const lab_module_state_names[] = {
	[MODULE_STATE_LIVE] = "[MODULE_STATE_LIVE] Normal state",
	[MODULE_STATE_COMING] = "[MODULE_STATE_COMING] Full formed, running module_init",
	[MODULE_STATE_GOING] = "[MODULE_STATE_GOING] Going away",
	[MODULE_STATE_UNFORMED] = "[MODULE_STATE_UNFORMED] Still setting it up",
};

/* vmlinux objects have no struct module; module objects print the module's state. */
static void lab_log_object(const char *callback, struct klp_object *obj)
{
	if (obj->mod)
		pr_info("%s: %s -> %s\n", callback, obj->mod->name, lab_module_state_names[obj->mod->state]);
	else
		pr_info("%s: vmlinux\n", callback);
}

static int pre_patch_callback(struct klp_object *obj)
{
	lab_log_object(__func__, obj);
	return LAB_PRE_PATCH_RET;
}

static void post_patch_callback(struct klp_object *obj)
{
	lab_log_object(__func__, obj);
}

static void pre_unpatch_callback(struct klp_object *obj)
{
	lab_log_object(__func__, obj);
}

static void post_unpatch_callback(struct klp_object *obj)
{
	lab_log_object(__func__, obj);
}

#define LAB_ALL_CALLBACKS                                                                 \
	{                                                                                 \
		.pre_patch = pre_patch_callback, .post_patch = post_patch_callback,       \
		.pre_unpatch = pre_unpatch_callback, .post_unpatch = post_unpatch_callback, \
	}

#endif
