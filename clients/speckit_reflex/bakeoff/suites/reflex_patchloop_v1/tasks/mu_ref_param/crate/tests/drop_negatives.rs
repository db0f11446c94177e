use rp_mu_ref_param::drop_negatives;

#[test]
fn drops_negatives_in_place() {
    let mut v = vec![3, -1, 0, -7, 2];
    assert_eq!(drop_negatives(&mut v), 2);
    assert_eq!(v, vec![3, 0, 2]);
    let mut empty: Vec<i32> = Vec::new();
    assert_eq!(drop_negatives(&mut empty), 0);
}
