/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The body of the klpfleet lab's system-state livepatches (test_klp_state, test_klp_state2,
 * test_klp_state3): an atomic-replace patch that raises console_loglevel and keeps the original in a
 * klp_state (id 1). Each .c file sets LAB_STATE_VERSION first. Version 2 takes over the state of an
 * installed patch that already holds it (klp_get_prev_state); version 1 never looks.
 */
#ifndef KLPFLEET_LAB_LOGLEVEL_STATE_H
#define KLPFLEET_LAB_LOGLEVEL_STATE_H

#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/printk.h>
#include <linux/slab.h>

#define CONSOLE_LOGLEVEL_STATE 1

static struct klp_patch patch;

static struct klp_state *previous_holder(void)
{
	return LAB_STATE_VERSION > 1 ? klp_get_prev_state(CONSOLE_LOGLEVEL_STATE) : NULL;
}

static int allocate_loglevel_state(void)
{
	struct klp_state *state = klp_get_state(&patch, CONSOLE_LOGLEVEL_STATE);
	struct klp_state *prev = previous_holder();

	if (!state)
		return -EINVAL;
	if (prev) {
		pr_info("%s: space to store console_loglevel already allocated\n", __func__);
		return 0;
	}
	state->data = kzalloc(sizeof(console_loglevel), GFP_KERNEL);
	if (!state->data)
		return -ENOMEM;
	pr_info("%s: allocating space to store console_loglevel\n", __func__);
	return 0;
}

static void fix_console_loglevel(void)
{
	struct klp_state *state = klp_get_state(&patch, CONSOLE_LOGLEVEL_STATE);
	struct klp_state *prev = previous_holder();

	if (!state)
		return;
	if (prev) {
		pr_info("%s: taking over the console_loglevel change\n", __func__);
		state->data = prev->data;
		prev->data = NULL;
		return;
	}
	pr_info("%s: fixing console_loglevel\n", __func__);
	*(int *)state->data = console_loglevel;
	console_loglevel = CONSOLE_LOGLEVEL_MOTORMOUTH;
}

static void restore_console_loglevel(void)
{
	struct klp_state *state = klp_get_state(&patch, CONSOLE_LOGLEVEL_STATE);
	struct klp_state *prev = previous_holder();

	if (!state)
		return;
	if (prev) {
		pr_info("%s: passing the console_loglevel change back to the old livepatch\n", __func__);
		prev->data = state->data;
		state->data = NULL;
		return;
	}
	pr_info("%s: restoring console_loglevel\n", __func__);
	console_loglevel = *(int *)state->data;
}

static void free_loglevel_state(void)
{
	struct klp_state *state = klp_get_state(&patch, CONSOLE_LOGLEVEL_STATE);

	if (!state)
		return;
	if (previous_holder()) {
		pr_info("%s: keeping space to store console_loglevel\n", __func__);
		return;
	}
	pr_info("%s: freeing space for the stored console_loglevel\n", __func__);
	kfree(state->data);
	state->data = NULL;
}

static int pre_patch_callback(struct klp_object *obj)
{
	pr_info("%s: vmlinux\n", __func__);
	return allocate_loglevel_state();
}

static void post_patch_callback(struct klp_object *obj)
{
	pr_info("%s: vmlinux\n", __func__);
	fix_console_loglevel();
}

static void pre_unpatch_callback(struct klp_object *obj)
{
	pr_info("%s: vmlinux\n", __func__);
	restore_console_loglevel();
}

static void post_unpatch_callback(struct klp_object *obj)
{
	pr_info("%s: vmlinux\n", __func__);
	free_loglevel_state();
}

static struct klp_func no_funcs[] = { {} };

static struct klp_object objs[] = {
	{
		.name = NULL,
		.funcs = no_funcs,
		.callbacks = {
			.pre_patch = pre_patch_callback,
			.post_patch = post_patch_callback,
			.pre_unpatch = pre_unpatch_callback,
			.post_unpatch = post_unpatch_callback,
		},
	},
	{}
};

static struct klp_state states[] = {
	{ .id = CONSOLE_LOGLEVEL_STATE, .version = LAB_STATE_VERSION },
	{}
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
	.states = states,
	.replace = true,
};

static int __init lab_state_init(void)
{
	return klp_enable_patch(&patch);
}

static void __exit lab_state_exit(void)
{
}

module_init(lab_state_init);
module_exit(lab_state_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");

#endif
