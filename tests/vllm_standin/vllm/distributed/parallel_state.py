TP_RANK = 0


def get_tensor_model_parallel_rank() -> int:
    return TP_RANK
